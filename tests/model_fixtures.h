// Small random models for tests: configs with MHA, GQA and unequal DHA layouts,
// each with or without q/k/v biases (Qwen2's attention).
#pragma once

#include <cstdint>
#include <string>

#include <vector>

#include "dha/checkpoint.h"
#include "dha/model.h"
#include "dha/train_config.h"

namespace dha::test {

// dim 32, 2 layers, 4 heads of 8, hidden 48, vocab 61, context 24.
ModelConfig tiny_config(bool tied = false, bool biased = false);
// tiny_config with unequal, non-contiguous, decoupled K/V maps.
ModelConfig tiny_dha_config(bool tied = false, bool biased = false);

// Random weights (deterministic for a seed), scaled so activations stay O(1);
// biases N(0, 0.5^2), large enough that a test which drops one sees it.
Checkpoint random_checkpoint(const ModelConfig& config, uint64_t seed);

// Random token ids [B, T] below the vocab size.
torch::Tensor random_tokens(int64_t batch, int64_t length, int64_t vocab, uint64_t seed);

// Calibration text for end-to-end dha-convert runs on tiny models: 40 short
// documents separated by blank lines.
std::string tiny_calibration_text();

// A tiny random MHA model (vocab 512, context 64) saved as an HF directory at
// `dir` with stories260K's tok512.bin beside it as tokenizer.bin (the caller
// checks that ../shared has it).
void save_tiny_model_with_tokenizer(const std::string& dir);

// A directory at `dir` holding one train shard of n random tokens in [3, vocab)
// with BOS (1) every 16; returns `dir`.
std::string write_random_token_data(const std::string& dir, int64_t vocab, int64_t n);

// A short recipe for the loop's tests: micro-batch 3 x 2 accumulation steps of
// seq_len tokens, lr 3e-3 after 3 warmup steps, a checkpoint every 4 steps, CPU.
TrainConfig small_train_config(int64_t steps, int64_t seq_len);

// The "loss" of every step line of a metrics.jsonl, in order.
std::vector<double> metrics_losses(const std::string& metrics_path);

}  // namespace dha::test
