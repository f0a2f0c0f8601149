// llama2.c legacy (version 0) checkpoints: 7 int32 header fields (dim,
// hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), fp32
// weights, the RoPE tables, then the classifier when untied (vocab_size < 0).
// q/k rows are stored interleaved (Meta order) and converted to rotate-half here.
#pragma once

#include <string>

#include "dha/checkpoint.h"

namespace dha::io {

// Reads and validates a .bin checkpoint; the file size must match the header exactly.
Checkpoint load_llama2c(const std::string& path);
// Only the config (the header, checked against the file size).
ModelConfig load_llama2c_config(const std::string& path);

// Writes a .bin checkpoint atomically (fp32). The layout must be plain GQA,
// the only one the format can express.
void save_llama2c(const std::string& path, const Checkpoint& checkpoint);

// The q/k row permutations between the interleaved (Meta, llama2.c) and the
// rotate-half (HF) layouts, for a [n_heads * head_dim, in] weight.
torch::Tensor interleaved_to_rotate_half(const torch::Tensor& weight, int64_t n_heads);
torch::Tensor rotate_half_to_interleaved(const torch::Tensor& weight, int64_t n_heads);

}  // namespace dha::io
