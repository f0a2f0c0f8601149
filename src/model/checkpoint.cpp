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
    if (!c.layout.shares_attention(l)) {  // a sharing layer has no queries or keys of its own
      out.push_back({p + "self_attn.q_proj.weight", {c.n_heads * c.head_dim, c.dim}});
      out.push_back({p + "self_attn.k_proj.weight", {c.layout.n_k_heads(l) * c.head_dim, c.dim}});
    }
    out.push_back({p + "self_attn.v_proj.weight", {c.layout.n_v_heads(l) * c.head_dim, c.dim}});
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
      if (!known)
        fail(source, ": unexpected tensor '", name, "'",
             name == "lm_head.weight" ? " (the config says the classifier is tied)" : "");
    }
  }
}

}  // namespace dha
