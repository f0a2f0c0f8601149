// ModelConfig and HeadLayout: validation, KV accounting and JSON.
#include "dha/config.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dha/error.h"

namespace dha {
namespace {

int64_t map_width(const std::vector<int64_t>& map) {
  return map.empty() ? 0 : *std::max_element(map.begin(), map.end()) + 1;
}

void validate_map(const std::vector<std::vector<int64_t>>& maps, const char* name,
                  int64_t n_layers, int64_t n_heads, const std::string& where, bool may_share) {
  if (static_cast<int64_t>(maps.size()) != n_layers)
    fail(where, ": ", name, " has ", maps.size(), " layers, expected ", n_layers);
  for (int64_t l = 0; l < n_layers; ++l) {
    const auto& map = maps[l];
    if (map.empty() && may_share) {
      if (l == 0)
        fail(where, ": ", name, "[0] is empty, but layer 0 cannot share attention (there is no earlier layer)");
      continue;
    }
    if (static_cast<int64_t>(map.size()) != n_heads)
      fail(where, ": ", name, "[", l, "] has ", map.size(), " entries, expected one per query head (",
           n_heads, ")");
    std::vector<bool> used(n_heads, false);
    for (int64_t i = 0; i < n_heads; ++i) {
      if (map[i] < 0 || map[i] >= n_heads)
        fail(where, ": ", name, "[", l, "][", i, "] = ", map[i], " is out of range [0, ", n_heads,
             ")");
      used[map[i]] = true;
    }
    const int64_t width = map_width(map);
    for (int64_t h = 0; h < width; ++h)
      if (!used[h])
        fail(where, ": ", name, "[", l, "] never uses head ", h, " but uses head ", width - 1,
             " (maps must be onto 0..H_K-1; renumber the heads)");
  }
}

}  // namespace

const char* rope_type_name(RopeScaling::Type type) {
  switch (type) {
    case RopeScaling::Type::kNone: return "default";
    case RopeScaling::Type::kLinear: return "linear";
    case RopeScaling::Type::kLlama3: return "llama3";
  }
  return "default";
}

HeadLayout HeadLayout::mha(int64_t n_layers, int64_t n_heads) { return gqa(n_layers, n_heads, n_heads); }

HeadLayout HeadLayout::gqa(int64_t n_layers, int64_t n_heads, int64_t n_kv_heads) {
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    fail("GQA layout: ", n_heads, " query heads cannot be split into ", n_kv_heads, " equal groups");
  std::vector<int64_t> map(n_heads);
  const int64_t group = n_heads / n_kv_heads;
  for (int64_t i = 0; i < n_heads; ++i) map[i] = i / group;
  HeadLayout layout;
  layout.k_map.assign(n_layers, map);
  layout.v_map.assign(n_layers, map);
  return layout;
}

int64_t HeadLayout::n_k_heads(int64_t layer) const { return map_width(k_map.at(layer)); }
int64_t HeadLayout::n_v_heads(int64_t layer) const { return map_width(v_map.at(layer)); }

int64_t HeadLayout::uniform_gqa_kv_heads() const {
  if (k_map.empty() || k_map.front().empty()) return 0;
  const int64_t n_heads = static_cast<int64_t>(k_map.front().size());
  const int64_t n_kv = n_k_heads(0);
  if (n_heads % n_kv != 0) return 0;
  const HeadLayout reference = gqa(n_layers(), n_heads, n_kv);
  return *this == reference ? n_kv : 0;
}

int64_t HeadLayout::attention_source(int64_t layer) const {
  int64_t source = layer;
  while (source > 0 && shares_attention(source)) --source;
  return source;
}

std::vector<LayerSpan> HeadLayout::shared_spans() const {
  std::vector<LayerSpan> spans;
  for (int64_t l = 0; l < n_layers(); ++l) {
    if (!shares_attention(l)) continue;
    if (!spans.empty() && spans.back().second == l - 1) spans.back().second = l;
    else spans.push_back({l, l});
  }
  return spans;
}

void HeadLayout::validate(int64_t n_layers, int64_t n_heads, const std::string& where) const {
  validate_map(k_map, "k_map", n_layers, n_heads, where, /*may_share=*/true);
  validate_map(v_map, "v_map", n_layers, n_heads, where, /*may_share=*/false);
}

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](int64_t value, const char* name) {
    if (value <= 0) fail(where, ": ", name, " must be positive, got ", value);
  };
  positive(dim, "dim");
  positive(n_layers, "n_layers");
  positive(n_heads, "n_heads");
  positive(head_dim, "head_dim");
  positive(hidden_dim, "hidden_dim");
  positive(vocab_size, "vocab_size");
  positive(max_seq_len, "max_seq_len");
  if (head_dim % 2 != 0) fail(where, ": head_dim must be even for RoPE, got ", head_dim);
  if (!(rope_theta > 0)) fail(where, ": rope_theta must be positive, got ", rope_theta);
  if (!(norm_eps > 0)) fail(where, ": norm_eps must be positive, got ", norm_eps);
  const RopeScaling& r = rope_scaling;
  if (r.scaled() && !(r.factor > 0))
    fail(where, ": RoPE scaling \"", rope_type_name(r.type), "\" needs a positive factor, got ", r.factor);
  if (r.type == RopeScaling::Type::kLlama3) {
    // The smoothing divides by high - low; the wavelength bounds divide by each.
    if (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor))
      fail(where, ": RoPE scaling \"llama3\" needs 0 < low_freq_factor < high_freq_factor, got ", r.low_freq_factor,
           " and ", r.high_freq_factor);
    if (r.original_max_position_embeddings <= 0)
      fail(where, ": RoPE scaling \"llama3\" needs a positive original_max_position_embeddings, got ",
           r.original_max_position_embeddings);
  }
  if (bos_id >= vocab_size || eos_id >= vocab_size)
    fail(where, ": bos/eos ids (", bos_id, ", ", eos_id, ") must be below vocab_size ", vocab_size);
  layout.validate(n_layers, n_heads, where);
}

int64_t HeadLayout::kv_heads() const {
  int64_t heads = 0;
  for (int64_t l = 0; l < n_layers(); ++l) heads += n_k_heads(l) + n_v_heads(l);
  return heads;
}

int64_t ModelConfig::kv_elements_per_token() const { return layout.kv_heads() * head_dim; }

int64_t ModelConfig::kv_bytes_per_token(int64_t bytes_per_element) const {
  return kv_elements_per_token() * bytes_per_element;
}

double ModelConfig::head_budget() const {
  return static_cast<double>(layout.kv_heads()) / static_cast<double>(2 * n_layers * n_heads);
}

int64_t ModelConfig::parameter_count() const {
  int64_t total = vocab_size * dim * (tied_embeddings ? 1 : 2) + dim;  // embeddings, final norm
  for (int64_t l = 0; l < n_layers; ++l) {
    const int64_t kv_heads = layout.n_k_heads(l) + layout.n_v_heads(l);
    total += 2 * dim;                                   // two RMSNorm weights
    total += (layout.shares_attention(l) ? 1 : 2) * n_heads * head_dim * dim;  // W_Q (unless shared), W_O
    total += kv_heads * head_dim * dim;                 // W_K, W_V
    if (attention_bias)                                 // b_Q (unless shared), b_K, b_V
      total += ((layout.shares_attention(l) ? 0 : n_heads) + kv_heads) * head_dim;
    total += 3 * hidden_dim * dim;                      // SwiGLU
  }
  return total;
}

nlohmann::json rope_scaling_to_json(const RopeScaling& r) {
  if (!r.scaled()) return nullptr;
  nlohmann::json j{{"rope_type", rope_type_name(r.type)}, {"factor", r.factor}};
  if (r.type == RopeScaling::Type::kLlama3) {
    j["low_freq_factor"] = r.low_freq_factor;
    j["high_freq_factor"] = r.high_freq_factor;
    j["original_max_position_embeddings"] = r.original_max_position_embeddings;
  }
  return j;
}

RopeScaling rope_scaling_from_json(const nlohmann::json& j, int64_t max_position_embeddings, const std::string& where) {
  RopeScaling r;
  if (j.is_null()) return r;
  if (!j.is_object()) fail(where, ": RoPE scaling must be an object, got ", j.dump());
  for (const auto& [key, value] : j.items())
    if (value.is_object())
      fail(where, ": RoPE parameters per layer type (\"", key, "\") are not supported (one set for all layers)");
  auto text = [&](const char* key) -> std::string {
    if (!j.contains(key) || j.at(key).is_null()) return "";
    if (!j.at(key).is_string()) fail(where, ": RoPE \"", key, "\" must be a string, got ", j.at(key).dump());
    return j.at(key).get<std::string>();
  };
  std::string type = text("rope_type");
  if (type.empty()) type = text("type");  // the older spelling
  if (type.empty()) type = "default";
  auto number = [&](const char* key) {
    if (!j.contains(key)) fail(where, ": RoPE scaling \"", type, "\" needs \"", key, "\"");
    if (!j.at(key).is_number()) fail(where, ": RoPE \"", key, "\" must be a number, got ", j.at(key).dump());
    return j.at(key).get<double>();
  };
  if (j.contains("partial_rotary_factor") && !(j.at("partial_rotary_factor").is_number() &&
                                               j.at("partial_rotary_factor").get<double>() == 1.0))
    fail(where, ": RoPE partial_rotary_factor ", j.at("partial_rotary_factor").dump(),
         " is not supported (every head dimension is rotated)");
  if (type == "default") return r;
  if (type == "linear") {
    r.type = RopeScaling::Type::kLinear;
    r.factor = number("factor");
  } else if (type == "llama3") {
    r.type = RopeScaling::Type::kLlama3;
    r.factor = number("factor");
    r.low_freq_factor = number("low_freq_factor");
    r.high_freq_factor = number("high_freq_factor");
    r.original_max_position_embeddings = max_position_embeddings;  // transformers' fallback
    if (j.contains("original_max_position_embeddings")) {
      const auto& v = j.at("original_max_position_embeddings");
      if (!v.is_number_integer() && !(v.is_number() && v.get<double>() == std::floor(v.get<double>())))
        fail(where, ": RoPE \"original_max_position_embeddings\" must be an integer, got ", v.dump());
      r.original_max_position_embeddings = static_cast<int64_t>(v.get<double>());
    }
  } else {
    fail(where, ": RoPE scaling type \"", type, "\" is not supported (supported: default, linear, llama3)");
  }
  return r;
}

nlohmann::json layout_to_json(const HeadLayout& layout) {
  nlohmann::json j{{"k_map", layout.k_map}, {"v_map", layout.v_map}};
  // Redundant with the empty k_map rows, but what a reader looks for.
  const auto spans = layout.shared_spans();
  if (!spans.empty()) j["shared_attention"] = spans;
  return j;
}

HeadLayout layout_from_json(const nlohmann::json& j, const std::string& where) {
  HeadLayout layout;
  try {
    layout.k_map = j.at("k_map").get<std::vector<std::vector<int64_t>>>();
    layout.v_map = j.at("v_map").get<std::vector<std::vector<int64_t>>>();
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": head layout needs \"k_map\" and \"v_map\" as arrays of integer arrays (",
         e.what(), ")");
  }
  std::vector<LayerSpan> spans;
  if (j.contains("shared_attention")) {
    const auto& list = j.at("shared_attention");
    bool ok = list.is_array();
    for (const auto& span : ok ? list : nlohmann::json::array())
      ok = ok && span.is_array() && span.size() == 2 && span[0].is_number_integer() && span[1].is_number_integer();
    if (!ok) fail(where, ": \"shared_attention\" must be an array of [first, last] layer pairs, got ", list.dump());
    spans = list.get<std::vector<LayerSpan>>();
  }
  // The spans and the empty k_map rows must say the same thing.
  const int64_t n_layers = static_cast<int64_t>(layout.k_map.size());
  std::vector<bool> in_span(n_layers, false);
  for (const auto& [first, last] : spans) {
    if (first < 0 || last < first || last >= n_layers)
      fail(where, ": shared_attention span [", first, ", ", last, "] does not fit layers 0..", n_layers - 1);
    for (int64_t l = first; l <= last; ++l) in_span[l] = true;
  }
  for (size_t l = 0; l < in_span.size(); ++l)
    if (in_span[l] != layout.k_map[l].empty())
      fail(where, ": layer ", l, in_span[l] ? " is in shared_attention but k_map[" : " is in no shared_attention span but k_map[",
           l, in_span[l] ? "] is not empty" : "] is empty");
  return layout;
}

ModelConfig model_config_from_json(const nlohmann::json& j, int64_t default_vocab, const std::string& where) {
  if (!j.is_object()) fail(where, ": a model description must be a JSON object");
  static const char* known[] = {"dim", "n_layers", "n_heads", "head_dim", "hidden_dim", "max_seq_len", "n_kv_heads",
                                "dha", "vocab_size", "rope_theta", "rope_scaling", "norm_eps", "tied_embeddings",
                                "attention_bias", "bos_id", "eos_id"};
  for (const auto& [key, value] : j.items()) {
    bool ok = key.rfind("_comment", 0) == 0;
    for (const char* k : known) ok = ok || key == k;
    if (!ok) fail(where, ": unknown key \"", key, "\"");
  }
  ModelConfig c;
  try {
    auto need = [&](const char* key) {
      if (!j.contains(key)) fail(where, ": \"", key, "\" is required");
      return j.at(key).get<int64_t>();
    };
    c.dim = need("dim");
    c.n_layers = need("n_layers");
    c.n_heads = need("n_heads");
    c.hidden_dim = need("hidden_dim");
    c.max_seq_len = need("max_seq_len");
    c.head_dim = j.value("head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0);
    c.vocab_size = j.value("vocab_size", default_vocab);
    c.rope_theta = j.value("rope_theta", 10000.0);
    c.norm_eps = j.value("norm_eps", 1e-5);
    c.tied_embeddings = j.value("tied_embeddings", false);
    c.attention_bias = j.value("attention_bias", false);
    if (j.contains("rope_scaling")) c.rope_scaling = rope_scaling_from_json(j.at("rope_scaling"), c.max_seq_len, where);
    c.bos_id = j.value("bos_id", 1);
    c.eos_id = j.value("eos_id", 2);
    if (j.contains("dha")) {
      c.layout = layout_from_json(j.at("dha"), where);
    } else {
      c.layout = HeadLayout::gqa(c.n_layers, c.n_heads, j.value("n_kv_heads", c.n_heads));
    }
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": a value has the wrong type (", e.what(), ")");
  }
  c.validate(where);
  return c;
}

std::string describe_layout(const ModelConfig& config) {
  std::ostringstream out;
  for (int64_t l = 0; l < config.n_layers; ++l) {
    if (l) out << " | ";
    out << "L" << l;
    if (config.layout.shares_attention(l)) out << " attn=L" << config.layout.attention_source(l);
    else out << " K" << config.layout.n_k_heads(l);
    out << " V" << config.layout.n_v_heads(l);
  }
  return out.str();
}

}  // namespace dha
