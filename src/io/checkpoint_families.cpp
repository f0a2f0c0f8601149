// The checkpoint families (dha/io/checkpoint_family.h): one adapter function
// per model_type, and the quirks they share. The HF tensor names are LLaMA's in
// all four, so none of them renames a tensor.
#include "dha/io/checkpoint_family.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/lookup.h"
#include "json_fields.h"

namespace dha::io {
namespace {
using detail::optional_field;
using detail::required;
using nlohmann::json;

// ---- q/k/v biases ---------------------------------------------------------------

// transformers' LLaMA-style attention_bias puts a bias on o_proj too, which
// dha's attention does not have.
std::function<bool(const json&, const std::string&)> refuse_o_proj_bias(const std::string& model_type) {
  return [model_type](const json& j, const std::string& where) {
    if (optional_field<bool>(j, "attention_bias", false, where))
      fail(where, ": attention_bias true means biases on q/k/v and o_proj for model_type \"", model_type,
           "\"; o_proj biases are not supported (q/k/v biases are, as in qwen2)");
    return false;
  };
}

// Qwen2 has q/k/v biases always, whatever attention_bias says (read all the
// same, so that a mistyped one is still refused).
bool always_qkv_bias(const json& j, const std::string& where) {
  optional_field<bool>(j, "attention_bias", false, where);
  return true;
}

// In a dha config attention_bias means q/k/v, as in modeling_dha.py.
bool qkv_bias_as_written(const json& j, const std::string& where) {
  return optional_field<bool>(j, "attention_bias", false, where);
}

// ---- sliding windows --------------------------------------------------------------

// Sliding-window attention is exact full attention as long as no query is
// further than the window from a key: refused unless the window covers the
// whole context the model accepts (its max_position_embeddings, which dha's
// forward enforces). `window` < 0: none.
void check_sliding_window(int64_t window, int64_t context, const std::string& layers,
                          const std::string& where) {
  if (window < 0 || window >= context) return;
  fail(where, ": sliding_window ", window, " (", layers, ") is below max_position_embeddings ", context,
       ": dha attends over the whole context and would differ beyond ", window,
       " positions; not supported (a config.json with max_position_embeddings <= ", window,
       " uses the model over that context)");
}

// sliding_window: `fallback` when absent, none (-1) when null.
int64_t window_field(const json& j, const char* key, int64_t fallback, const std::string& where) {
  if (!j.contains(key)) return fallback;
  if (j.at(key).is_null()) return -1;
  return required<int64_t>(j, key, where);
}

// Mistral's window applies to every layer (4096 when the key is absent, as MistralConfig).
void mistral_window(const json& j, const ModelConfig& c, const std::string& where) {
  check_sliding_window(window_field(j, "sliding_window", 4096, where), c.max_seq_len, "every layer", where);
}

// Qwen2's only with use_sliding_window, to the layers layer_types marks
// "sliding_attention" (default: those from max_window_layers on).
void qwen2_windows(const json& j, const ModelConfig& c, const std::string& where) {
  if (!optional_field<bool>(j, "use_sliding_window", false, where)) return;
  const int64_t window = window_field(j, "sliding_window", 4096, where);
  std::vector<int64_t> sliding;
  if (j.contains("layer_types") && !j.at("layer_types").is_null()) {
    const auto types = required<std::vector<std::string>>(j, "layer_types", where);
    for (size_t l = 0; l < types.size(); ++l) {
      if (types[l] != "full_attention" && types[l] != "sliding_attention")
        fail(where, ": layer_types[", l, "] = \"", types[l],
             "\" is not supported (full_attention, sliding_attention)");
      if (types[l] == "sliding_attention") sliding.push_back(static_cast<int64_t>(l));
    }
  } else {
    const int64_t first = optional_field<int64_t>(j, "max_window_layers", 28, where);
    for (int64_t l = std::max<int64_t>(first, 0); l < c.n_layers; ++l) sliding.push_back(l);
  }
  if (!sliding.empty())
    check_sliding_window(window, c.max_seq_len,
                         "layers " + std::to_string(sliding.front()) + ".." + std::to_string(sliding.back()),
                         where);
}

// ---- what the writer emits --------------------------------------------------------

// MHA/GQA layouts are transformers' own models; any other is marked with dha's
// model_type so that transformers refuses it with a clear message rather than
// a shape error. A GQA layout with q/k/v biases is Qwen2's architecture
// (LLaMA's attention_bias would add an o_proj bias).
bool standard_layout(const ModelConfig& c) { return c.layout.uniform_gqa_kv_heads() != 0; }

// ---- the families -----------------------------------------------------------------

CheckpointFamily llama() {
  CheckpointFamily f;
  f.name = "llama";
  f.summary = "Llama 2 / 3.x, Sheared-LLaMA, SmolLM2 and other LLaMA-architecture checkpoints; "
              "attention_bias (biases on q/k/v and o_proj) refused";
  f.default_max_position_embeddings = 2048;
  f.attention_bias = refuse_o_proj_bias(f.name);
  f.writes = [](const ModelConfig& c) { return standard_layout(c) && !c.attention_bias; };
  f.architecture = "LlamaForCausalLM";
  f.gguf_architecture = "llama";
  f.remote_code_fields = "{}";
  return f;
}

// Mistral is LLaMA with a sliding window; llama.cpp writes it as "llama", so
// it has no GGUF architecture of its own.
CheckpointFamily mistral() {
  CheckpointFamily f;
  f.name = "mistral";
  f.summary = "Mistral: LLaMA with a sliding window, read when the window covers the whole context "
              "(max_position_embeddings); written back as llama";
  f.default_max_position_embeddings = 4096 * 32;
  f.attention_bias = refuse_o_proj_bias(f.name);
  f.check_sliding_windows = mistral_window;
  return f;
}

// llama.cpp's qwen2 architecture has bias tensors (blk.N.attn_q.bias) that the
// GGUF reader and writer do not map: no GGUF architecture.
CheckpointFamily qwen2() {
  CheckpointFamily f;
  f.name = "qwen2";
  f.summary = "Qwen2 / 2.5: q/k/v biases (kept through conversion); sliding windows (use_sliding_window) read when "
              "they cover the whole context";
  f.default_max_position_embeddings = 32768;
  f.attention_bias = always_qkv_bias;
  f.check_sliding_windows = qwen2_windows;
  f.writes = [](const ModelConfig& c) { return standard_layout(c) && c.attention_bias; };
  f.architecture = "Qwen2ForCausalLM";
  f.remote_code_fields = R"({"attention_bias": true})";
  return f;
}

// dha's own: any layout, the per-layer maps under "dha" (hf_dir.h). As GGUF,
// the per-layer GQA layouts llama.cpp runs are its "deci" architecture
// (per-layer head_count_kv).
CheckpointFamily dha_llama() {
  CheckpointFamily f;
  f.name = "dha_llama";
  f.summary = "dha's own: any per-layer K/V head layout (the maps under \"dha\" in config.json), written for every "
              "layout that is not one GQA count for all layers";
  f.default_max_position_embeddings = 2048;
  f.attention_bias = qkv_bias_as_written;
  f.writes = [](const ModelConfig& c) { return !standard_layout(c); };
  f.architecture = "DhaLlamaForCausalLM";
  f.gguf_architecture = "deci";
  f.remote_code_fields = "{}";
  return f;
}

// Replaces the first occurrence of `from` that is a run of whole dotted pieces.
std::string replace_pieces(const std::string& name, const std::string& from, const std::string& to) {
  for (size_t at = name.find(from); at != std::string::npos; at = name.find(from, at + 1)) {
    const size_t end = at + from.size();
    if ((at == 0 || name[at - 1] == '.') && (end == name.size() || name[end] == '.'))
      return name.substr(0, at) + to + name.substr(end);
  }
  return name;
}

}  // namespace

const std::vector<CheckpointFamily>& checkpoint_families() {
  static const std::vector<CheckpointFamily> families = {llama(), mistral(), qwen2(), dha_llama()};
  return families;
}

std::string CheckpointFamily::canonical_name(const std::string& checkpoint_name) const {
  std::string name = checkpoint_name;
  for (const TensorRename& r : tensor_renames) name = replace_pieces(name, r.checkpoint, r.canonical);
  return name;
}

std::string CheckpointFamily::checkpoint_name(const std::string& canonical_name) const {
  std::string name = canonical_name;
  for (auto r = tensor_renames.rbegin(); r != tensor_renames.rend(); ++r)
    name = replace_pieces(name, r->canonical, r->checkpoint);
  return name;
}

const CheckpointFamily& config_family(const json& config, const std::string& where) {
  const std::string model_type = optional_field<std::string>(config, "model_type", "llama", where);
  if (const CheckpointFamily* family = find_row_or_null(checkpoint_families(), model_type)) return *family;
  fail(where, ": model_type \"", model_type,
       "\" is not supported (supported: ", row_names(checkpoint_families()), ")");
}

const CheckpointFamily& written_family(const ModelConfig& config) {
  for (const CheckpointFamily& family : checkpoint_families())
    if (family.writes && family.writes(config)) return family;
  fail("internal: no checkpoint family writes this layout (", describe_layout(config), ")");
}

const CheckpointFamily* find_gguf_family(const std::string& architecture) {
  for (const CheckpointFamily& family : checkpoint_families())
    if (!family.gguf_architecture.empty() && family.gguf_architecture == architecture) return &family;
  return nullptr;
}

std::string gguf_architectures() {
  std::string names;
  for (const CheckpointFamily& family : checkpoint_families())
    if (!family.gguf_architecture.empty() && find_gguf_family(family.gguf_architecture) == &family)
      names += (names.empty() ? "" : ", ") + family.gguf_architecture;  // each once, as its first family
  return names;
}

}  // namespace dha::io
