// Builds a tiny DHA model through the installed library and runs it.
#include <dha/config.h>
#include <dha/model.h>

#include <cstdio>

int main() {
  dha::ModelConfig config;
  config.dim = 16;
  config.n_layers = 1;
  config.n_heads = 4;
  config.head_dim = 4;
  config.hidden_dim = 24;
  config.vocab_size = 10;
  config.max_seq_len = 8;
  config.layout.k_map = {{0, 1, 0, 0}};
  config.layout.v_map = {{0, 0, 0, 0}};
  dha::Llama model(config);
  const torch::Tensor logits = model->forward(torch::zeros({1, 3}, torch::kInt64));
  std::printf("logits %lld x %lld x %lld, KV bytes/token %lld\n", (long long)logits.size(0),
              (long long)logits.size(1), (long long)logits.size(2),
              (long long)config.kv_bytes_per_token(2));
  return logits.size(2) == 10 ? 0 : 1;
}
