// Model hyper-parameters and the per-layer decoupled K/V head layout.
// MHA, GQA and MQA are special cases of HeadLayout, not separate types.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dha {

// For query head i of layer l, k_map[l][i] is the key head it reads and
// v_map[l][i] the value head. Each map is onto 0..H_K[l]-1 (resp. H_V[l]-1);
// groups may be unequal and non-contiguous.
//
// Shared Attention (docs/method.md §4.3): an empty k_map row marks a layer that
// reuses the attention probabilities of its source, the last earlier layer that
// has keys. Such a layer has no query or key projection and no key cache
// (H_K[l] = 0); it keeps its own values and output projection. Layer 0 never shares.
using LayerSpan = std::pair<int64_t, int64_t>;  // first and last layer, inclusive

struct HeadLayout {
  std::vector<std::vector<int64_t>> k_map;  // [L][H]
  std::vector<std::vector<int64_t>> v_map;  // [L][H]

  static HeadLayout mha(int64_t n_layers, int64_t n_heads);
  // Contiguous equal groups: query head i reads KV head i / (H / n_kv_heads).
  static HeadLayout gqa(int64_t n_layers, int64_t n_heads, int64_t n_kv_heads);

  int64_t n_layers() const { return static_cast<int64_t>(k_map.size()); }
  int64_t n_k_heads(int64_t layer) const;  // H_K[l]
  int64_t n_v_heads(int64_t layer) const;  // H_V[l]
  int64_t kv_heads() const;                 // sum_l H_K[l] + H_V[l]
  bool shares_attention(int64_t layer) const { return k_map.at(layer).empty(); }
  // The layer whose attention probabilities `layer` uses (itself unless it shares).
  int64_t attention_source(int64_t layer) const;
  // Maximal runs of consecutive sharing layers, in order.
  std::vector<LayerSpan> shared_spans() const;
  // The KV-head count when this is plain GQA (same contiguous equal groups for K
  // and V in every layer), else 0.
  int64_t uniform_gqa_kv_heads() const;
  // Throws dha::Error naming `where` unless both maps have L rows of H entries
  // (k_map rows of sharing layers: none), every entry is in range, every map
  // is onto and layer 0 has keys.
  void validate(int64_t n_layers, int64_t n_heads, const std::string& where) const;

  bool operator==(const HeadLayout& other) const {
    return k_map == other.k_map && v_map == other.v_map;
  }
};

// RoPE frequency scaling: transformers' "rope_scaling" / "rope_parameters" of
// the types whose inverse frequencies are a fixed function of the config and
// whose attention factor is 1 (modeling_rope_utils). kNone is plain RoPE.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;                           // linear, llama3: > 0
  double low_freq_factor = 1.0;                  // llama3
  double high_freq_factor = 4.0;                 // llama3: > low_freq_factor
  int64_t original_max_position_embeddings = 0;  // llama3: the pre-training context

  bool scaled() const { return type != Type::kNone; }
  bool operator==(const RopeScaling& other) const {
    return type == other.type && factor == other.factor && low_freq_factor == other.low_freq_factor &&
           high_freq_factor == other.high_freq_factor &&
           original_max_position_embeddings == other.original_max_position_embeddings;
  }
  bool operator!=(const RopeScaling& other) const { return !(*this == other); }
};

// "default", "linear", "llama3": the rope_type names of transformers.
const char* rope_type_name(RopeScaling::Type type);

struct ModelConfig {
  int64_t dim = 0;          // d
  int64_t n_layers = 0;     // L
  int64_t n_heads = 0;      // H (query heads)
  int64_t head_dim = 0;     // d_h
  int64_t hidden_dim = 0;   // SwiGLU hidden size
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;  // context
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double norm_eps = 1e-5;
  bool tied_embeddings = false;
  // Biases on the q, k and v projections (Qwen2); o_proj and the MLP never have one.
  bool attention_bias = false;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  HeadLayout layout;

  // Throws dha::Error naming `where` on any inconsistent or non-positive field.
  void validate(const std::string& where) const;

  // KV cache elements per token: sum_l (H_K[l] + H_V[l]) * d_h.
  int64_t kv_elements_per_token() const;
  // KV cache bytes per token at `bytes_per_element` (2 = a bf16 cache).
  int64_t kv_bytes_per_token(int64_t bytes_per_element = 2) const;
  // Head budget rho = sum_l (H_K + H_V) / (2 L H).
  double head_budget() const;
  int64_t parameter_count() const;
};

// transformers' spelling of a scaling: {"rope_type", "factor", ...}; null for kNone.
nlohmann::json rope_scaling_to_json(const RopeScaling& scaling);
// Reads {"rope_type" (or "type"), "factor", "low_freq_factor", "high_freq_factor",
// "original_max_position_embeddings" (default: max_position_embeddings)};
// any other type ("dynamic", "yarn", "longrope", ...) is an error naming it and
// the supported ones.
RopeScaling rope_scaling_from_json(const nlohmann::json& j, int64_t max_position_embeddings, const std::string& where);

// The toolkit's JSON for a config (also embedded in config.json of its
// directory format under "dha").
nlohmann::json layout_to_json(const HeadLayout& layout);
HeadLayout layout_from_json(const nlohmann::json& j, const std::string& where);

// A model description for pre-training from scratch (dha-train --from-scratch):
// {"dim", "n_layers", "n_heads", "hidden_dim", "max_seq_len", and optionally
//  "head_dim" (dim / n_heads), "n_kv_heads" (n_heads) or "dha": {"k_map", "v_map"},
//  "vocab_size" (default_vocab), "rope_theta" (10000), "rope_scaling" (none),
//  "norm_eps" (1e-5), "tied_embeddings" (false), "attention_bias" (false)}.
//  Unknown keys are errors.
ModelConfig model_config_from_json(const nlohmann::json& j, int64_t default_vocab, const std::string& where);

// A short human-readable summary of the per-layer layout: "L0 K4 V4 | L1 K2 V3 ...".
std::string describe_layout(const ModelConfig& config);

}  // namespace dha
