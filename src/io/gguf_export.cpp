// Checkpoint -> GGUF in the form llama.cpp's own converters write (the keys of
// convert_hf_to_gguf.py's LlamaModel and DeciModel), so that llama.cpp runs a
// converted model with its per-layer KV head counts, hence its KV savings.
#include "dha/io/gguf_export.h"

#include <algorithm>

#include "dha/error.h"
#include "dha/io/checkpoint_family.h"
#include "dha/io/gguf_checkpoint.h"
#include "dha/io/llama2c.h"
#include "dha/tokenizer_vocab.h"

namespace dha::io {
namespace {

// llama_ftype values (llama.h): what general.file_type says the weights are.
constexpr uint32_t kFileTypeAllF32 = 0, kFileTypeMostlyF16 = 1, kFileTypeMostlyBF16 = 32;

uint32_t u32(int64_t v) { return static_cast<uint32_t>(v); }

std::vector<int64_t> kv_heads_per_layer(const ModelConfig& c) {
  std::vector<int64_t> kv;
  for (int64_t l = 0; l < c.n_layers; ++l) kv.push_back(c.layout.n_k_heads(l));
  return kv;
}

// llama.cpp's attention gives query head i of a layer the KV head
// i / (H / H_KV), for K and V alike; anything else would be another model.
void check_llama_cpp_layout(const ModelConfig& c, const std::string& path) {
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (c.layout.shares_attention(l))
      fail(path, ": layer ", l, " shares attention, which GGUF cannot hold (export dha)");
    const int64_t kv = c.layout.n_k_heads(l);
    bool contiguous = c.layout.k_map[l] == c.layout.v_map[l] && c.n_heads % kv == 0;
    for (int64_t q = 0; contiguous && q < c.n_heads; ++q)
      contiguous = c.layout.k_map[l][q] == q / (c.n_heads / kv);
    if (!contiguous)
      fail(path, ": layer ", l,
           " is not per-layer GQA with contiguous equal groups and K and V on one "
           "partition (",
           describe_layout(c),
           "); write it through the gqa re-layout (dha-export --format gguf "
           "does)");
  }
}

void add_tokenizer(GgufMetadata& m, const ModelConfig& c, const std::string& tokenizer) {
  if (tokenizer.empty()) {
    // llama.cpp's vocabulary-less model: vocab_size dummy tokens, fed ids.
    m.set("tokenizer.ggml.model", GgufValue::string("none"));
    m.set("tokenizer.ggml.bos_token_id", GgufValue::uint32(u32(c.bos_id)));
    m.set("tokenizer.ggml.eos_token_id", GgufValue::uint32(u32(c.eos_id)));
    return;
  }
  if (tokenizer.size() >= 5 && tokenizer.compare(tokenizer.size() - 5, 5, ".gguf") == 0) {
    // A model read from GGUF keeps the vocabulary its file carries, as it is.
    const GgufFile source(tokenizer);
    for (const auto& [key, value] : source.metadata())
      if (key.rfind("tokenizer.", 0) == 0) m.set(key, value);
    const auto tokens = source.find_strings("tokenizer.ggml.tokens");
    if (!tokens || static_cast<int64_t>(tokens->size()) > c.vocab_size)
      fail(tokenizer, ": its tokenizer.ggml.tokens do not fit the model's vocab of ", c.vocab_size);
    return;
  }
  const TokenizerVocab v = read_tokenizer_vocab(tokenizer, c.vocab_size);
  // tokenizer.ggml.model "llama" is llama.cpp's sentencepiece tokenizer
  // (scores as merge priorities, byte fallback through the byte pieces).
  m.set("tokenizer.ggml.model", GgufValue::string("llama"));
  m.set("tokenizer.ggml.pre", GgufValue::string("default"));
  m.set("tokenizer.ggml.tokens", GgufValue::string_array(v.pieces));
  m.set("tokenizer.ggml.scores",
        GgufValue::float_array(GgufValueType::kFloat32, {v.scores.begin(), v.scores.end()}));
  std::vector<int64_t> types;
  for (const PieceType t : v.types) types.push_back(static_cast<int64_t>(t));
  m.set("tokenizer.ggml.token_type", GgufValue::signed_array(GgufValueType::kInt32, types));
  const auto id = [&](const char* key, int32_t value) {
    if (value >= 0) m.set(key, GgufValue::uint32(u32(value)));
  };
  id("tokenizer.ggml.bos_token_id", v.bos_id);
  id("tokenizer.ggml.eos_token_id", v.eos_id);
  id("tokenizer.ggml.unknown_token_id", v.unk_id);
  id("tokenizer.ggml.padding_token_id", v.pad_id);
  // dha scores and generates from BOS + text (eval.h), without EOS.
  m.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(v.bos_id >= 0));
  m.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
  m.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(v.add_dummy_prefix));
}

}  // namespace

std::string gguf_architecture(const ModelConfig& c) {
  const CheckpointFamily& family = written_family(c);
  if (family.gguf_architecture.empty())
    fail("a model written as model_type \"", family.name, "\" has no GGUF architecture (export hf or dha)");
  return family.gguf_architecture;
}

GgufMetadata gguf_export_metadata(const ModelConfig& c, const std::string& tokenizer,
                                  torch::ScalarType weights) {
  const std::string arch = gguf_architecture(c);
  const auto key = [&](const char* k) { return arch + "." + k; };
  GgufMetadata m;
  m.set("general.architecture", GgufValue::string(arch));
  m.set("general.file_type", GgufValue::uint32(weights == torch::kHalf       ? kFileTypeMostlyF16
                                               : weights == torch::kBFloat16 ? kFileTypeMostlyBF16
                                                                             : kFileTypeAllF32));
  m.set(key("vocab_size"), GgufValue::uint32(u32(c.vocab_size)));
  m.set(key("context_length"), GgufValue::uint32(u32(c.max_seq_len)));
  m.set(key("embedding_length"), GgufValue::uint32(u32(c.dim)));
  m.set(key("block_count"), GgufValue::uint32(u32(c.n_layers)));
  m.set(key("feed_forward_length"), GgufValue::uint32(u32(c.hidden_dim)));
  m.set(key("attention.head_count"), GgufValue::uint32(u32(c.n_heads)));
  const std::vector<int64_t> kv = kv_heads_per_layer(c);
  // One value per layer where they differ (llama.cpp's get_key_or_arr reads
  // either; the llama architecture sizes every layer by layer 0's count).
  if (!std::all_of(kv.begin(), kv.end(), [&](int64_t n) { return n == kv.at(0); }))
    m.set(key("attention.head_count_kv"), GgufValue::signed_array(GgufValueType::kInt32, kv));
  else
    m.set(key("attention.head_count_kv"), GgufValue::uint32(u32(kv.at(0))));
  m.set(key("attention.key_length"), GgufValue::uint32(u32(c.head_dim)));
  m.set(key("attention.value_length"), GgufValue::uint32(u32(c.head_dim)));
  m.set(key("attention.layer_norm_rms_epsilon"), GgufValue::float32(static_cast<float>(c.norm_eps)));
  m.set(key("rope.dimension_count"), GgufValue::uint32(u32(c.head_dim)));
  m.set(key("rope.freq_base"), GgufValue::float32(static_cast<float>(c.rope_theta)));
  add_tokenizer(m, c, tokenizer);
  return m;
}

void save_gguf_checkpoint(const std::string& path, const Checkpoint& checkpoint,
                          std::optional<torch::ScalarType> dtype, const std::string& tokenizer) {
  const ModelConfig& c = checkpoint.config;
  const torch::ScalarType weights = dtype.value_or(checkpoint.storage_dtype);
  if (weights != torch::kFloat32 && weights != torch::kHalf && weights != torch::kBFloat16)
    fail(path, ": GGUF weights dtype ", c10::toString(weights),
         " is not supported (expected f32, f16 or bf16)");
  check_llama_cpp_layout(c, path);
  if (c.attention_bias)
    fail(path, ": this model has q/k/v biases, which the GGUF export does not write yet (export hf or dha)");
  // llama.cpp would run such a file with plain RoPE: a different function beyond the short context.
  if (c.rope_scaling.scaled())
    fail(path, ": this model has RoPE scaling \"", rope_type_name(c.rope_scaling.type),
         "\", which the GGUF export does not write yet (export hf or dha)");
  check_tensors(c, checkpoint.tensors, path);
  const GgufMetadata metadata = gguf_export_metadata(c, tokenizer, weights);

  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, shape] : expected_tensors(c)) {
    torch::Tensor t = checkpoint.tensors.at(name).to(torch::kCPU, torch::kFloat32);
    // llama.cpp's converter permutes q and k rows into its interleaved RoPE
    // pairs per head, k with the layer's own KV head count: the inverse of
    // what gguf_to_checkpoint undoes.
    const std::string prefix = "model.layers.";
    if (name.compare(0, prefix.size(), prefix) == 0) {
      const int64_t layer = std::stoll(name.substr(prefix.size()));
      if (name.find(".q_proj.") != std::string::npos) t = rotate_half_to_interleaved(t, c.n_heads);
      if (name.find(".k_proj.") != std::string::npos)
        t = rotate_half_to_interleaved(t, c.layout.n_k_heads(layer));
    }
    // Norm weights stay float32, as llama.cpp's converters keep 1-D tensors.
    tensors.push_back({*gguf_name_from_hf(name), t.dim() == 1 ? t : t.to(weights)});
  }
  save_gguf(path, metadata, tensors);
}

}  // namespace dha::io
