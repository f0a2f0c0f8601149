// GGUF -> Checkpoint for the GGUF architectures of the checkpoint families
// (llama, deci): config from metadata (scalars or per-layer arrays, as
// llama.cpp's get_key_or_arr reads them), canonical tensor names, and q/k rows
// un-permuted to rotate-half order.
#include "dha/io/gguf_checkpoint.h"

#include <sstream>

#include "dha/error.h"
#include "dha/io/checkpoint_family.h"
#include "dha/io/llama2c.h"

namespace dha::io {
namespace {

// llama.cpp's tensor names, the same in every architecture it shares with
// LLaMA: the GGUF format's own, mapped to the canonical (HF LLaMA) names.
struct NamePair {
  const char* gguf;
  const char* hf;
};
constexpr NamePair kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};
constexpr NamePair kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

// Plausibility bound for sizes read from metadata: far above any real model,
// low enough that products of two of them fit 64 bits.
constexpr int64_t kMaxSize = int64_t{1} << 24;

// "PREFIX<layer>.REST" with a canonical decimal layer (no sign, no leading zeros).
bool split_layer(const std::string& name, const std::string& prefix, int64_t& layer, std::string& rest) {
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  size_t i = prefix.size(), j = i;
  while (j < name.size() && j - i < 9 && name[j] >= '0' && name[j] <= '9') ++j;
  if (j == i || j >= name.size() || name[j] != '.' || (name[i] == '0' && j - i > 1)) return false;
  layer = std::stoll(name.substr(i, j - i));
  rest = name.substr(j + 1);
  return true;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

class ConfigReader {
 public:
  ConfigReader(const GgufFile& file, std::string arch) : file_(file), arch_(std::move(arch)) {}

  std::string key(const char* k) const { return arch_ + "." + k; }

  int64_t size(const char* k) const {
    const int64_t v = file_.get_int(key(k));
    check_size(key(k), v);
    return v;
  }

  std::optional<int64_t> optional_size(const char* k) const {
    const auto v = file_.find_int(key(k));
    if (v) check_size(key(k), *v);
    return v;
  }

  // A scalar for every layer or an array of one value per layer (llama.cpp's
  // get_key_or_arr); `fallback` when the key is absent, else required.
  std::vector<int64_t> per_layer(const char* k, int64_t n_layers,
                                 const std::optional<std::vector<int64_t>>& fallback) const {
    const std::string full = key(k);
    const GgufValue* v = file_.find(full);
    if (!v) {
      if (!fallback) fail(file_.path(), ": metadata '", full, "' is missing (expected an integer)");
      return *fallback;
    }
    std::vector<int64_t> values;
    if (v->is_array()) {
      values = *file_.find_ints(full);
      if (static_cast<int64_t>(values.size()) != n_layers)
        fail(file_.path(), ": metadata '", full, "' has ", values.size(), " entries for ", n_layers,
             " layers (expected one per layer, or a single integer)");
    } else {
      values.assign(static_cast<size_t>(n_layers), file_.get_int(full));
    }
    for (int64_t x : values)
      if (x < 0 || x > kMaxSize)
        fail(file_.path(), ": metadata '", full, "' holds ", x, ", not a plausible size (expected 0 to ",
             kMaxSize, ")");
    return values;
  }

  // The one value every layer shares; per-layer differences are refused
  // because ModelConfig has one query head count and one hidden size.
  int64_t uniform(const char* k, const std::vector<int64_t>& values, const char* zero_meaning) const {
    for (size_t l = 0; l < values.size(); ++l) {
      if (values[l] == 0)
        fail(file_.path(), ": metadata '", key(k), "' is 0 for layer ", l, " (", zero_meaning,
             "; not supported)");
      if (values[l] != values[0])
        fail(file_.path(), ": metadata '", key(k), "' varies across layers (layer 0: ", values[0], ", layer ", l,
             ": ", values[l], "; the toolkit needs one value for all layers)");
    }
    return values.at(0);
  }

 private:
  void check_size(const std::string& full, int64_t v) const {
    if (v <= 0 || v > kMaxSize)
      fail(file_.path(), ": metadata '", full, "' = ", v, " is not a plausible size (expected 1 to ", kMaxSize,
           ")");
  }

  const GgufFile& file_;
  std::string arch_;
};

}  // namespace

std::optional<std::string> hf_name_from_gguf(const std::string& name) {
  for (const auto& n : kGlobalNames)
    if (name == n.gguf) return std::string(n.hf);
  int64_t layer = 0;
  std::string rest;
  if (!split_layer(name, "blk.", layer, rest)) return std::nullopt;
  for (const auto& n : kLayerNames)
    if (rest == n.gguf) return "model.layers." + std::to_string(layer) + "." + n.hf;
  return std::nullopt;
}

std::optional<std::string> gguf_name_from_hf(const std::string& name) {
  for (const auto& n : kGlobalNames)
    if (name == n.hf) return std::string(n.gguf);
  int64_t layer = 0;
  std::string rest;
  if (!split_layer(name, "model.layers.", layer, rest)) return std::nullopt;
  for (const auto& n : kLayerNames)
    if (rest == n.hf) return "blk." + std::to_string(layer) + "." + n.gguf;
  return std::nullopt;
}

ModelConfig gguf_model_config(const GgufFile& file) {
  const std::string& path = file.path();
  const std::string arch = file.get_string("general.architecture");
  if (!find_gguf_family(arch))
    fail(path, ": general.architecture is '", arch.substr(0, 40), "' (supported: ", gguf_architectures(),
         ")");
  const ConfigReader r(file, arch);

  if (const auto experts = file.find_int(r.key("expert_count")); experts && *experts > 0)
    fail(path, ": metadata '", r.key("expert_count"), "' = ", *experts,
         ": mixture-of-experts models are not supported");
  if (const auto scaling = file.find_string(r.key("rope.scaling.type")); scaling && *scaling != "none")
    fail(path, ": metadata '", r.key("rope.scaling.type"), "' is '", scaling->substr(0, 40),
         "': RoPE scaling is not supported");
  if (const auto scale = file.find_float(r.key("rope.scale_linear")); scale && *scale != 1.0)
    fail(path, ": metadata '", r.key("rope.scale_linear"), "' = ", *scale, ": RoPE scaling is not supported");

  ModelConfig c;
  c.n_layers = r.size("block_count");
  c.dim = r.size("embedding_length");
  c.max_seq_len = r.size("context_length");
  const std::vector<int64_t> heads = r.per_layer("attention.head_count", c.n_layers, std::nullopt);
  c.n_heads = r.uniform("attention.head_count", heads, "an attention-free layer");
  // head_count_kv defaults to head_count, as in llama.cpp.
  const std::vector<int64_t> kv = r.per_layer("attention.head_count_kv", c.n_layers, heads);
  const std::vector<int64_t> ffn = r.per_layer("feed_forward_length", c.n_layers, std::nullopt);
  c.hidden_dim = r.uniform("feed_forward_length", ffn, "a layer without a feed-forward block");

  if (const auto key_length = r.optional_size("attention.key_length")) {
    c.head_dim = *key_length;
  } else {
    if (c.dim % c.n_heads != 0)
      fail(path, ": metadata '", r.key("embedding_length"), "' = ", c.dim, " is not divisible by '",
           r.key("attention.head_count"), "' = ", c.n_heads, " (and there is no attention.key_length)");
    c.head_dim = c.dim / c.n_heads;
  }
  if (const auto value_length = r.optional_size("attention.value_length"); value_length && *value_length != c.head_dim)
    fail(path, ": metadata '", r.key("attention.value_length"), "' = ", *value_length, " differs from the key length ",
         c.head_dim, " (not supported)");
  if (const auto rot = r.optional_size("rope.dimension_count"); rot && *rot != c.head_dim)
    fail(path, ": metadata '", r.key("rope.dimension_count"), "' = ", *rot, " is not the head size ", c.head_dim,
         " (partial rotary embeddings are not supported)");
  if (c.head_dim % 2 != 0) fail(path, ": head size ", c.head_dim, " is odd (RoPE needs an even head size)");

  c.rope_theta = file.find_float(r.key("rope.freq_base")).value_or(10000.0);
  c.norm_eps = file.get_float(r.key("attention.layer_norm_rms_epsilon"));
  if (!(c.rope_theta > 0)) fail(path, ": metadata '", r.key("rope.freq_base"), "' = ", c.rope_theta, " (expected > 0)");
  if (!(c.norm_eps > 0)) fail(path, ": metadata '", r.key("attention.layer_norm_rms_epsilon"), "' = ", c.norm_eps,
                              " (expected > 0)");

  if (const auto v = r.optional_size("vocab_size")) {
    c.vocab_size = *v;
  } else if (const GgufValue* tokens = file.find("tokenizer.ggml.tokens"); tokens && tokens->is_array()) {
    c.vocab_size = static_cast<int64_t>(tokens->size());
  } else if (const GgufTensorInfo* embd = file.find_tensor("token_embd.weight"); embd && embd->dims.size() == 2) {
    c.vocab_size = embd->dims[1];
  } else {
    fail(path, ": no vocabulary size (no '", r.key("vocab_size"), "', tokenizer.ggml.tokens or token_embd.weight)");
  }
  c.tied_embeddings = file.find_tensor("output.weight") == nullptr;
  auto token_id = [&](const char* k, int32_t fallback) {
    const auto id = file.find_int(k);
    if (!id) return fallback;
    if (*id < 0 || *id >= c.vocab_size)
      fail(path, ": metadata '", k, "' = ", *id, " is not a token id (vocab ", c.vocab_size, ")");
    return static_cast<int32_t>(*id);
  };
  c.bos_id = token_id("tokenizer.ggml.bos_token_id", c.bos_id);
  c.eos_id = token_id("tokenizer.ggml.eos_token_id", c.eos_id);

  // Per-layer KV head counts: contiguous groups of query heads per layer.
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (kv[l] == 0)
      fail(path, ": metadata '", r.key("attention.head_count_kv"), "' is 0 for layer ", l,
           " (a linear-attention or attention-free layer; not supported)");
    if (c.n_heads % kv[l] != 0)
      fail(path, ": metadata '", r.key("attention.head_count_kv"), "' is ", kv[l], " for layer ", l,
           ", which does not divide the ", c.n_heads, " query heads");
    const HeadLayout layer = HeadLayout::gqa(1, c.n_heads, kv[l]);
    c.layout.k_map.push_back(layer.k_map[0]);
    c.layout.v_map.push_back(layer.v_map[0]);
  }
  c.validate(path);
  return c;
}

Checkpoint gguf_to_checkpoint(const GgufFile& file) {
  const std::string& path = file.path();
  Checkpoint checkpoint;
  checkpoint.config = gguf_model_config(file);
  const ModelConfig& c = checkpoint.config;

  // Every tensor must be one the config implies, with the implied shape:
  // checked on the tensor infos, before anything is dequantized.
  std::map<std::string, std::vector<int64_t>> expected;
  for (const auto& [name, shape] : expected_tensors(c)) expected[name] = shape;
  for (const GgufTensorInfo& info : file.tensors()) {
    if (info.name == "rope_freqs.weight")
      fail(path, ": tensor 'rope_freqs.weight' (Llama 3 RoPE frequency scaling) is not supported");
    const auto hf = hf_name_from_gguf(info.name);
    if (!hf)
      fail(path, ": unexpected tensor '", info.name.substr(0, 64),
           "' (expected token_embd, output_norm, output and blk.N.{attn_norm, attn_q, attn_k, attn_v, "
           "attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.weight)");
    const auto it = expected.find(*hf);
    if (it == expected.end())
      fail(path, ": unexpected tensor '", info.name, "' (the model has ", c.n_layers, " layers)");
    if (info.shape() != it->second)
      fail(path, ": tensor '", info.name, "' has shape ", shape_string(info.shape()), " (GGUF dims ",
           shape_string(info.dims), ") but the metadata implies ", shape_string(it->second));
  }
  for (const auto& [name, shape] : expected)
    if (!file.find_tensor(*gguf_name_from_hf(name)))
      fail(path, ": tensor '", *gguf_name_from_hf(name), "' is missing");

  bool quantized = false;
  for (const GgufTensorInfo& info : file.tensors()) {
    const std::string hf = *hf_name_from_gguf(info.name);
    quantized = quantized || !(info.type == kGgmlF32 || info.type == kGgmlF16 || info.type == kGgmlBF16);
    torch::Tensor t = file.tensor(info.name);
    // llama.cpp's converter permutes q and k rows into interleaved (GPT-J) RoPE
    // pairs with the layer's own head count (KV heads for k); undo it.
    int64_t layer = 0;
    std::string rest;
    if (split_layer(info.name, "blk.", layer, rest)) {
      if (rest == "attn_q.weight") t = interleaved_to_rotate_half(t, c.n_heads);
      if (rest == "attn_k.weight") t = interleaved_to_rotate_half(t, c.layout.n_k_heads(layer));
    }
    checkpoint.tensors[hf] = std::move(t);
  }
  // Quantized weights are dequantized to float32, and the whole checkpoint is
  // then float32 (there is no smaller dtype that holds them exactly in
  // general). A float file keeps its dtypes; norms are F32 in llama.cpp's
  // F16/BF16 files, so the embedding's dtype stands for the weights'.
  if (quantized) {
    for (auto& [name, t] : checkpoint.tensors) t = t.to(torch::kFloat32);
    checkpoint.storage_dtype = torch::kFloat32;
  } else {
    checkpoint.storage_dtype = checkpoint.tensors.at("model.embed_tokens.weight").scalar_type();
  }
  check_tensors(c, checkpoint.tensors, path);
  return checkpoint;
}

Checkpoint load_gguf_checkpoint(const std::string& path) {
  const GgufFile file(path);
  return gguf_to_checkpoint(file);
}

torch::ScalarType gguf_storage_dtype(const std::string& path) {
  const GgufFile file(path);
  const uint32_t type = file.tensor_info("token_embd.weight").type;
  return type == kGgmlF16 ? torch::kFloat16 : type == kGgmlBF16 ? torch::kBFloat16 : torch::kFloat32;
}

}  // namespace dha::io
