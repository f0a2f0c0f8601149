// dha-inspect: a model's config, per-layer K/V head layout, size and KV cache cost.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/io/load.h"

namespace {

std::string groups(const std::vector<int64_t>& map) {
  // "{0,1} {2} {3,4,5}": query heads listed under the KV head they read.
  int64_t width = 0;
  for (int64_t h : map) width = std::max(width, h + 1);
  std::string out;
  for (int64_t g = 0; g < width; ++g) {
    out += g ? " {" : "{";
    bool first = true;
    for (size_t i = 0; i < map.size(); ++i)
      if (map[i] == g) out += (first ? "" : ",") + std::to_string(i), first = false;
    out += "}";
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Show a model's config, per-layer K/V head layout, parameters and KV bytes per token",
               "dha-inspect"};
  std::string model_path;
  bool as_json = false;
  app.add_option("--model", model_path, dha::io::checkpoint_formats_help())->required();
  app.add_flag("--json", as_json, "print one JSON object instead of text");
  return dha::cli::run(app, argc, argv, [&] {
    const dha::Checkpoint ck = dha::io::load_checkpoint(model_path);
    const dha::ModelConfig& c = ck.config;
    if (as_json) {
      nlohmann::json j = {{"dim", c.dim}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                          {"head_dim", c.head_dim}, {"hidden_dim", c.hidden_dim},
                          {"vocab_size", c.vocab_size}, {"max_seq_len", c.max_seq_len},
                          {"rope_theta", c.rope_theta}, {"rope_scaling", dha::rope_scaling_to_json(c.rope_scaling)},
                          {"attention_bias", c.attention_bias}, {"norm_eps", c.norm_eps},
                          {"tied_embeddings", c.tied_embeddings},
                          {"storage_dtype", c10::toString(ck.storage_dtype)},
                          {"parameters", c.parameter_count()},
                          {"kv_bytes_per_token", c.kv_bytes_per_token(2)},
                          {"head_budget", c.head_budget()}, {"layout", dha::layout_to_json(c.layout)}};
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("model:          %s\n", model_path.c_str());
    std::printf("dim %lld, layers %lld, heads %lld x %lld, hidden %lld, vocab %lld, context %lld\n",
                (long long)c.dim, (long long)c.n_layers, (long long)c.n_heads, (long long)c.head_dim,
                (long long)c.hidden_dim, (long long)c.vocab_size, (long long)c.max_seq_len);
    std::printf("rope theta %g, norm eps %g, classifier %s, stored as %s\n", c.rope_theta, c.norm_eps,
                c.tied_embeddings ? "tied" : "untied", c10::toString(ck.storage_dtype));
    if (c.rope_scaling.scaled())
      std::printf("rope scaling:   %s\n", dha::rope_scaling_to_json(c.rope_scaling).dump().c_str());
    if (c.attention_bias) std::printf("biases:         q/k/v projections\n");
    std::printf("parameters:     %lld\n", static_cast<long long>(c.parameter_count()));
    std::printf("KV bytes/token: %lld (bf16 cache), head budget %.4f of MHA\n",
                static_cast<long long>(c.kv_bytes_per_token(2)), c.head_budget());
    const auto spans = c.layout.shared_spans();
    if (!spans.empty()) {
      std::printf("shared attention:");
      for (const auto& [first, last] : spans)
        std::printf(" layers %lld-%lld use layer %lld's", (long long)first, (long long)last,
                    (long long)c.layout.attention_source(first));
      std::printf(" (no queries, keys or key cache of their own)\n");
    }
    std::printf("layer  H_K  H_V  key groups | value groups\n");
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string keys = c.layout.shares_attention(l)
                                   ? "attention of layer " + std::to_string(c.layout.attention_source(l))
                                   : groups(c.layout.k_map[l]);
      std::printf("%5lld %4lld %4lld  %s | %s\n", (long long)l, (long long)c.layout.n_k_heads(l),
                  (long long)c.layout.n_v_heads(l), keys.c_str(), groups(c.layout.v_map[l]).c_str());
    }
    return 0;
  });
}
