// Small random models for tests.
#include "model_fixtures.h"

#include <filesystem>

#include "dha/data.h"

#include <cmath>

#include <torch/torch.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "test_util.h"

namespace dha::test {

ModelConfig tiny_config(bool tied, bool biased) {
  ModelConfig c;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.head_dim = 8;
  c.hidden_dim = 48;
  c.vocab_size = 61;
  c.max_seq_len = 24;
  c.tied_embeddings = tied;
  c.attention_bias = biased;
  c.layout = HeadLayout::mha(c.n_layers, c.n_heads);
  return c;
}

ModelConfig tiny_dha_config(bool tied, bool biased) {
  ModelConfig c = tiny_config(tied, biased);
  c.layout.k_map = {{1, 0, 1, 1}, {0, 0, 0, 0}};
  c.layout.v_map = {{0, 1, 2, 0}, {2, 1, 0, 1}};
  return c;
}

Checkpoint random_checkpoint(const ModelConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  Checkpoint checkpoint;
  checkpoint.config = config;
  for (const auto& [name, shape] : expected_tensors(config)) {
    torch::Tensor t;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      t = 0.5 * torch::randn(shape);
    } else if (shape.size() == 1) {
      t = 1.0 + 0.1 * torch::randn(shape);  // norm weights near one
    } else {
      t = torch::randn(shape) / std::sqrt(static_cast<double>(shape[1]));
    }
    checkpoint.tensors[name] = t;
  }
  return checkpoint;
}

torch::Tensor random_tokens(int64_t batch, int64_t length, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(vocab, {batch, length}, torch::kInt64);
}

std::string tiny_calibration_text() {
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The little cat number " + std::to_string(i) + " sat on a warm mat.\n\n";
  return text;
}

void save_tiny_model_with_tokenizer(const std::string& dir) {
  ModelConfig c = tiny_config();
  c.vocab_size = 512;
  c.max_seq_len = 64;
  io::DirSaveOptions save;
  save.extra_files.push_back({shared_path("models/stories260K/tok512.bin"), "tokenizer.bin"});
  io::save_hf_dir(dir, random_checkpoint(c, 1), save);
}

std::string write_random_token_data(const std::string& dir, int64_t vocab, int64_t n) {
  torch::manual_seed(11);
  const torch::Tensor t = torch::randint(3, vocab, {n}, torch::kInt32);
  std::vector<int32_t> tokens(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + n);
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < n; i += 16) {
    tokens[i] = 1;
    starts.push_back(i);
  }
  std::filesystem::create_directories(dir);
  write_token_shard(dir + "/train-00000.tok", tokens, vocab, starts, {FirstToken::kBos, 1});
  return dir;
}

TrainConfig small_train_config(int64_t steps, int64_t seq_len) {
  TrainConfig c;
  c.steps = steps;
  c.micro_batch = 3;
  c.grad_accum = 2;
  c.seq_len = seq_len;
  c.lr = 3e-3;
  c.warmup = 3;
  c.checkpoint_every = 4;
  c.device = "cpu";
  return c;
}

std::vector<double> metrics_losses(const std::string& metrics_path) {
  std::vector<double> out;
  std::istringstream in(io::read_file(metrics_path));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

}  // namespace dha::test
