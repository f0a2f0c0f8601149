// The canonical tensor names/shapes of a LLaMA with decoupled K/V heads.
#include "dha/checkpoint.h"

#include <sstream>

#include "dha/error.h"

namespace dha {
namespace {

std::string shape_string(c10::IntArrayRef shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.dim}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {c.dim}});
    auto projection = [&](const char* proj, int64_t heads) {
      out.push_back({p + "self_attn." + proj + ".weight", {heads * c.head_dim, c.dim}});
      if (c.attention_bias) out.push_back({p + "self_attn." + proj + ".bias", {heads * c.head_dim}});
    };
    if (!c.layout.shares_attention(l)) {  // a sharing layer has no queries or keys of its own
      projection("q_proj", c.n_heads);
      projection("k_proj", c.layout.n_k_heads(l));
    }
    projection("v_proj", c.layout.n_v_heads(l));
    out.push_back({p + "self_attn.o_proj.weight", {c.dim, c.n_heads * c.head_dim}});
    out.push_back({p + "post_attention_layernorm.weight", {c.dim}});
    out.push_back({p + "mlp.gate_proj.weight", {c.hidden_dim, c.dim}});
    out.push_back({p + "mlp.up_proj.weight", {c.hidden_dim, c.dim}});
    out.push_back({p + "mlp.down_proj.weight", {c.dim, c.hidden_dim}});
  }
  out.push_back({"model.norm.weight", {c.dim}});
  if (!c.tied_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.dim}});
  return out;
}

void check_tensors(const ModelConfig& config, const TensorMap& tensors, const std::string& source) {
  const auto expected = expected_tensors(config);
  for (const auto& [name, shape] : expected) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) fail(source, ": tensor '", name, "' is missing");
    if (it->second.sizes() != c10::IntArrayRef(shape))
      fail(source, ": tensor '", name, "' has shape ", shape_string(it->second.sizes()),
           " but the config implies ", shape_string(shape));
  }
  if (tensors.size() != expected.size()) {
    for (const auto& [name, tensor] : tensors) {
      bool known = false;
      for (const auto& e : expected) known = known || e.first == name;
      if (known) continue;
      const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
      std::string hint;
      if (name == "lm_head.weight") hint = " (the config says the classifier is tied)";
      else if (bias && name.find("self_attn.o_proj") != std::string::npos) hint = " (o_proj biases are not supported)";
      else if (bias && !config.attention_bias) hint = " (the config says the attention has no biases)";
      fail(source, ": unexpected tensor '", name, "'", hint);
    }
  }
}

torch::Tensor join_heads(const torch::Tensor& weight, const torch::Tensor& bias, int64_t head_dim) {
  const torch::Tensor w = weight.view({-1, head_dim, weight.size(1)});
  if (!bias.defined()) return w;
  return torch::cat({w, bias.view({-1, head_dim, 1}).to(w.scalar_type())}, -1);
}

std::pair<torch::Tensor, torch::Tensor> split_heads(const torch::Tensor& heads, bool bias) {
  const int64_t d = heads.size(2) - (bias ? 1 : 0);
  torch::Tensor weight = heads.narrow(2, 0, d).reshape({-1, d});
  torch::Tensor b = bias ? heads.select(2, d).reshape({-1}) : torch::Tensor();
  return {weight, b};
}

std::string projection_name(int64_t layer, const std::string& proj, bool bias) {
  return "model.layers." + std::to_string(layer) + ".self_attn." + proj + (bias ? ".bias" : ".weight");
}

torch::Tensor projection_heads(const Checkpoint& checkpoint, int64_t layer, const std::string& proj) {
  const ModelConfig& c = checkpoint.config;
  const torch::Tensor bias =
      c.attention_bias ? checkpoint.tensors.at(projection_name(layer, proj, true)) : torch::Tensor();
  return join_heads(checkpoint.tensors.at(projection_name(layer, proj)), bias, c.head_dim);
}

void set_projection_heads(Checkpoint& checkpoint, int64_t layer, const std::string& proj, const torch::Tensor& heads) {
  const bool bias = checkpoint.config.attention_bias;
  if (heads.dim() != 3 || heads.size(2) != checkpoint.config.dim + (bias ? 1 : 0))
    fail("set_projection_heads: ", projection_name(layer, proj), " needs heads [n, d_h, ", checkpoint.config.dim,
         bias ? " + 1" : "", "]");
  auto [w, b] = split_heads(heads, bias);
  checkpoint.tensors[projection_name(layer, proj)] = w.to(torch::kCPU).contiguous();
  if (bias) checkpoint.tensors[projection_name(layer, proj, true)] = b.to(torch::kCPU).contiguous();
}

}  // namespace dha
