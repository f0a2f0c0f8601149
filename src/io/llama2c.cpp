// llama2.c legacy .bin checkpoints: reading, writing, q/k permutation.
#include "dha/io/llama2c.h"

#include <cstring>
#include <fstream>

#include "dha/error.h"
#include "dha/io/atomic_file.h"

namespace dha::io {
namespace {

constexpr int64_t kHeaderBytes = 7 * 4;

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// One weight in file order, with its HF name when it is per-layer (layer >= 0).
struct Slot {
  std::string name;
  std::vector<int64_t> shape;
};

std::string layer_name(int64_t l, const char* suffix) {
  return "model.layers." + std::to_string(l) + "." + suffix;
}

// The file order of llama2.c's legacy export: each weight kind stacked over layers.
std::vector<Slot> file_order(const ModelConfig& c) {
  const int64_t kv_dim = c.layout.n_k_heads(0) * c.head_dim;
  std::vector<Slot> slots;
  slots.push_back({"model.embed_tokens.weight", {c.vocab_size, c.dim}});
  auto per_layer = [&](const char* suffix, std::vector<int64_t> shape) {
    for (int64_t l = 0; l < c.n_layers; ++l) slots.push_back({layer_name(l, suffix), shape});
  };
  per_layer("input_layernorm.weight", {c.dim});
  per_layer("self_attn.q_proj.weight", {c.dim, c.dim});
  per_layer("self_attn.k_proj.weight", {kv_dim, c.dim});
  per_layer("self_attn.v_proj.weight", {kv_dim, c.dim});
  per_layer("self_attn.o_proj.weight", {c.dim, c.dim});
  per_layer("post_attention_layernorm.weight", {c.dim});
  per_layer("mlp.gate_proj.weight", {c.hidden_dim, c.dim});
  per_layer("mlp.down_proj.weight", {c.dim, c.hidden_dim});
  per_layer("mlp.up_proj.weight", {c.hidden_dim, c.dim});
  slots.push_back({"model.norm.weight", {c.dim}});
  return slots;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

bool is_query_or_key(const std::string& name) {
  return name.find("q_proj") != std::string::npos || name.find("k_proj") != std::string::npos;
}

ModelConfig config_from_header(const Header& h, const std::string& path) {
  const int32_t fields[] = {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.seq_len};
  const char* names[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "seq_len"};
  for (int i = 0; i < 6; ++i)
    if (fields[i] <= 0 || fields[i] > (1 << 24))
      fail(path, ": header field ", names[i], " = ", fields[i],
           " is not a plausible size (is this a llama2.c legacy .bin checkpoint?)");
  if (h.vocab_size == 0 || h.vocab_size < -(1 << 24) || h.vocab_size > (1 << 24))
    fail(path, ": header field vocab_size = ", h.vocab_size, " is not a plausible size");
  if (h.dim % h.n_heads != 0)
    fail(path, ": header dim ", h.dim, " is not divisible by n_heads ", h.n_heads);
  if (h.n_heads % h.n_kv_heads != 0)
    fail(path, ": header n_heads ", h.n_heads, " is not divisible by n_kv_heads ", h.n_kv_heads);
  ModelConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.head_dim = h.dim / h.n_heads;
  c.vocab_size = h.vocab_size < 0 ? -static_cast<int64_t>(h.vocab_size) : h.vocab_size;
  c.tied_embeddings = h.vocab_size > 0;  // llama2.c: a negative vocab marks an untied classifier
  c.max_seq_len = h.seq_len;
  c.rope_theta = 10000.0;  // fixed in llama2.c
  c.norm_eps = 1e-5;       // fixed in llama2.c
  c.layout = HeadLayout::gqa(c.n_layers, c.n_heads, h.n_kv_heads);
  c.validate(path);
  return c;
}

// The trailing RoPE tables as llama2.c's export writes them ([seq_len, d_h/2] each).
std::pair<torch::Tensor, torch::Tensor> rope_tables(const ModelConfig& c) {
  const torch::Tensor inv_freq =
      1.0 / torch::pow(c.rope_theta, torch::arange(0, c.head_dim, 2, torch::kFloat32) /
                                         static_cast<double>(c.head_dim));
  const torch::Tensor angles = torch::outer(torch::arange(c.max_seq_len, torch::kFloat32), inv_freq);
  return {angles.cos(), angles.sin()};
}

}  // namespace

torch::Tensor interleaved_to_rotate_half(const torch::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), head_dim = rows / n_heads;
  return w.reshape({n_heads, head_dim / 2, 2, w.size(1)}).transpose(1, 2).reshape({rows, w.size(1)}).contiguous();
}

torch::Tensor rotate_half_to_interleaved(const torch::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), head_dim = rows / n_heads;
  return w.reshape({n_heads, 2, head_dim / 2, w.size(1)}).transpose(1, 2).reshape({rows, w.size(1)}).contiguous();
}

namespace {

// Reads and checks the header; the file size must match it exactly.
ModelConfig read_header(std::ifstream& in, const std::string& path) {
  if (!in) fail(path, ": cannot open (no such file or not readable)");
  in.seekg(0, std::ios::end);
  const int64_t file_size = static_cast<int64_t>(in.tellg());
  if (file_size < kHeaderBytes)
    fail(path, ": file is ", file_size, " bytes, shorter than the 28-byte llama2.c header");
  in.seekg(0);
  Header h{};
  in.read(reinterpret_cast<char*>(&h), kHeaderBytes);
  const ModelConfig c = config_from_header(h, path);
  int64_t floats = 0;
  for (const auto& slot : file_order(c)) floats += numel(slot.shape);
  const int64_t rope_floats = c.max_seq_len * c.head_dim;  // cos and sin tables, d_h/2 each
  const int64_t classifier = c.tied_embeddings ? 0 : c.vocab_size * c.dim;
  const int64_t expected = kHeaderBytes + 4 * (floats + rope_floats + classifier);
  if (file_size != expected)
    fail(path, ": file is ", file_size, " bytes but its header (dim ", c.dim, ", hidden ", c.hidden_dim,
         ", layers ", c.n_layers, ", heads ", c.n_heads, "/", c.layout.n_k_heads(0), " kv, vocab ",
         h.vocab_size, ", seq_len ", c.max_seq_len, ") implies ", expected,
         file_size < expected ? " (truncated?)" : " (trailing data; not a legacy v0 checkpoint?)");
  return c;
}

}  // namespace

ModelConfig load_llama2c_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return read_header(in, path);
}

Checkpoint load_llama2c(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Checkpoint checkpoint;
  checkpoint.config = read_header(in, path);
  const ModelConfig& c = checkpoint.config;
  const std::vector<Slot> slots = file_order(c);
  const int64_t rope_floats = c.max_seq_len * c.head_dim;

  auto read_tensor = [&](const std::vector<int64_t>& shape) {
    torch::Tensor t = torch::empty(shape, torch::kFloat32);
    in.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * 4);
    if (!in) fail(path, ": read failed");
    return t;
  };
  for (const auto& slot : slots) {
    torch::Tensor t = read_tensor(slot.shape);
    checkpoint.tensors[slot.name] =
        is_query_or_key(slot.name) ? interleaved_to_rotate_half(t, t.size(0) / c.head_dim) : t;
  }
  in.seekg(4 * rope_floats, std::ios::cur);  // the RoPE tables are recomputed, not read
  if (!c.tied_embeddings) checkpoint.tensors["lm_head.weight"] = read_tensor({c.vocab_size, c.dim});
  checkpoint.storage_dtype = torch::kFloat32;
  return checkpoint;
}

void save_llama2c(const std::string& path, const Checkpoint& checkpoint) {
  const ModelConfig& c = checkpoint.config;
  const int64_t n_kv = c.layout.uniform_gqa_kv_heads();
  if (n_kv == 0)
    fail(path, ": the llama2.c format holds only MHA/GQA models; this layout (",
         describe_layout(c), ") needs the dha directory format or a gqa/mha export");
  if (c.rope_scaling.scaled())
    fail(path, ": the llama2.c format has plain RoPE only; this model has RoPE scaling \"",
         rope_type_name(c.rope_scaling.type), "\" (export a dha or hf directory)");
  if (c.attention_bias)
    fail(path, ": the llama2.c format has no biases; this model has q/k/v biases (export a dha or hf directory)");
  if (c.rope_theta != 10000.0 || c.norm_eps != 1e-5)
    fail(path, ": the llama2.c format fixes rope_theta 10000 and norm_eps 1e-5; this model has ",
         c.rope_theta, " and ", c.norm_eps);
  if (c.head_dim * c.n_heads != c.dim)
    fail(path, ": the llama2.c format needs head_dim * n_heads == dim");
  check_tensors(c, checkpoint.tensors, path);

  // Streamed one fp32 tensor at a time: no copy of the whole model in memory.
  AtomicFileWriter out(path);
  auto append = [&](const torch::Tensor& t) {
    const torch::Tensor f = t.to(torch::kCPU, torch::kFloat32).contiguous();
    out.write(std::string_view(reinterpret_cast<const char*>(f.data_ptr<float>()), f.numel() * 4));
  };
  const Header h{static_cast<int32_t>(c.dim), static_cast<int32_t>(c.hidden_dim),
                 static_cast<int32_t>(c.n_layers), static_cast<int32_t>(c.n_heads),
                 static_cast<int32_t>(n_kv),
                 static_cast<int32_t>(c.tied_embeddings ? c.vocab_size : -c.vocab_size),
                 static_cast<int32_t>(c.max_seq_len)};
  out.write(std::string_view(reinterpret_cast<const char*>(&h), kHeaderBytes));
  for (const auto& slot : file_order(c)) {
    const torch::Tensor& t = checkpoint.tensors.at(slot.name);
    append(is_query_or_key(slot.name) ? rotate_half_to_interleaved(t, t.size(0) / c.head_dim) : t);
  }
  const auto [cos, sin] = rope_tables(c);
  append(cos);
  append(sin);
  if (!c.tied_embeddings) append(checkpoint.tensors.at("lm_head.weight"));
  out.commit();
}

}  // namespace dha::io
