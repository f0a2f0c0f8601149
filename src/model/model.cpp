// The LLaMA forward pass with decoupled K/V heads, and its KV cache.
#include "dha/model.h"

#include <cmath>

#include "layer_recompute.h"
#include "dha/attention.h"
#include "dha/error.h"
#include "dha/io/mapped_region.h"

namespace dha {
namespace {


constexpr double kPi = 3.14159265358979323846;

torch::Tensor map_tensor(const std::vector<int64_t>& map) {
  return torch::tensor(map, torch::kInt64);
}

}  // namespace

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (const auto& t : k) total += t.numel() * t.element_size();
  for (const auto& t : v) total += t.numel() * t.element_size();
  return total;
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, bool allocate) : eps_(eps) {
  weight = register_parameter("weight", allocate ? torch::ones({dim}) : torch::empty({0}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // Normalise in float32 whatever the activation dtype (as HF LLaMA does).
  const torch::Tensor x32 = x.to(torch::kFloat32);
  const torch::Tensor normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + eps_);
  return weight * normed.to(x.scalar_type());
}

torch::Tensor rope_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor exponents = torch::arange(0, head_dim, 2, f64) / static_cast<double>(head_dim);
  torch::Tensor inv_freq = torch::pow(theta, -exponents);  // [d_h/2]
  switch (scaling.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:  // positions / factor, folded into the frequencies
      inv_freq = inv_freq / scaling.factor;
      break;
    case RopeScaling::Type::kLlama3: {
      // Wavelengths below old_context / high_freq_factor keep their frequency,
      // those above old_context / low_freq_factor are slowed by `factor`, and in
      // between the two blend linearly in old_context / wavelength. Both bounds
      // belong to the blend, where it meets the two sides.
      const double old_context = static_cast<double>(scaling.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / scaling.low_freq_factor;
      const double high_freq_wavelen = old_context / scaling.high_freq_factor;
      auto f = inv_freq.accessor<double, 1>();
      for (int64_t i = 0; i < inv_freq.size(0); ++i) {
        const double wavelen = 2 * kPi / f[i];
        if (wavelen < high_freq_wavelen) continue;
        if (wavelen > low_freq_wavelen) {
          f[i] = f[i] / scaling.factor;
          continue;
        }
        const double smooth = (old_context / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        f[i] = (1 - smooth) * f[i] / scaling.factor + smooth * f[i];
      }
      break;
    }
  }
  return inv_freq;
}

RopeImpl::RopeImpl(int64_t head_dim, int64_t max_seq_len, double theta, const RopeScaling& scaling) {
  // Angles in float64 then rounded once, so long contexts keep their accuracy.
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor inv_freq = rope_inverse_frequencies(head_dim, theta, scaling);  // [d_h/2]
  const torch::Tensor angles = torch::outer(torch::arange(max_seq_len, f64), inv_freq);
  const torch::Tensor both = torch::cat({angles, angles}, -1);                  // [T, d_h]
  cos_ = register_buffer("cos", both.cos().to(torch::kFloat32));
  sin_ = register_buffer("sin", both.sin().to(torch::kFloat32));
}

torch::Tensor RopeImpl::apply(const torch::Tensor& x, int64_t start) const {
  const int64_t t = x.size(2), half = x.size(3) / 2;
  const torch::Tensor cos = cos_.narrow(0, start, t).to(x.scalar_type());
  const torch::Tensor sin = sin_.narrow(0, start, t).to(x.scalar_type());
  const torch::Tensor rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

AttentionImpl::AttentionImpl(const ModelConfig& c, int64_t layer, bool allocate)
    : layer_(layer),
      n_heads_(c.n_heads),
      n_k_heads_(c.layout.n_k_heads(layer)),
      n_v_heads_(c.layout.n_v_heads(layer)),
      head_dim_(c.head_dim),
      shares_(c.layout.shares_attention(layer)),
      emits_(!shares_ && layer + 1 < c.n_layers && c.layout.shares_attention(layer + 1)) {
  if (!shares_) {
    q_proj = register_module("q_proj", Projection(c.dim, n_heads_ * head_dim_, c.attention_bias, allocate));
    k_proj = register_module("k_proj", Projection(c.dim, n_k_heads_ * head_dim_, c.attention_bias, allocate));
  }
  v_proj = register_module("v_proj", Projection(c.dim, n_v_heads_ * head_dim_, c.attention_bias, allocate));
  o_proj = register_module("o_proj", Projection(n_heads_ * head_dim_, c.dim, false, allocate));
  if (!shares_) k_map = register_buffer("k_map", map_tensor(c.layout.k_map[layer]));
  v_map = register_buffer("v_map", map_tensor(c.layout.v_map[layer]));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const Rope& rope, int64_t start, torch::Tensor cache_k,
                                     torch::Tensor cache_v, torch::Tensor& probabilities, const LayerForward& extras) {
  const int64_t b = x.size(0), t = x.size(1);
  auto heads = [&](const torch::Tensor& y, int64_t n) {
    return y.view({b, t, n, head_dim_}).transpose(1, 2);  // [B, n, T, d_h]
  };
  const KVWeights* given = extras.kv_weights;
  AttentionObserver* observer = extras.observer;
  const bool observe_kv = observer && observer->wants_keys_and_values(layer_);
  const bool observe_p = observer && observer->wants_probabilities(layer_);
  const bool v_given = given && given->v_weight.defined();
  torch::Tensor v = heads(project(x, v_given ? given->v_weight : v_proj->weight, v_given ? given->v_bias : v_proj->bias),
                          n_v_heads_);  // an undefined bias: none
  if (observe_kv && shares_) observer->keys_and_values(layer_, torch::Tensor(), v.detach());
  if (cache_v.defined()) {
    cache_v.narrow(2, start, t).copy_(v);
    v = cache_v.narrow(2, 0, start + t).to(x.scalar_type());
  }
  auto output = [&](const torch::Tensor& o) {
    return o_proj(o.transpose(1, 2).reshape({b, t, n_heads_ * head_dim_}));
  };
  if (shares_) {
    if (!probabilities.defined() || probabilities.size(2) != t || probabilities.size(3) != v.size(2))
      fail("attention: a layer that shares attention got no matching probabilities from its source layer");
    if (observe_p) observer->probabilities(layer_, probabilities.detach());
    return output(apply_attention_probabilities(probabilities, v, v_map));
  }

  const bool k_given = given && given->k_weight.defined();
  torch::Tensor q = rope->apply(heads(q_proj(x), n_heads_), start);
  torch::Tensor k =
      heads(project(x, k_given ? given->k_weight : k_proj->weight, k_given ? given->k_bias : k_proj->bias), n_k_heads_);
  if (observe_kv) observer->keys_and_values(layer_, k.detach(), v.detach());
  k = rope->apply(k, start);
  if (cache_k.defined()) {
    cache_k.narrow(2, start, t).copy_(k);
    k = cache_k.narrow(2, 0, start + t).to(q.scalar_type());
  }
  if (emits_ || observe_p) {
    // Materialised: P goes on to the sharing layers (or to the observer).
    const torch::Tensor p = attention_probabilities(q, k, k_map, /*causal=*/true);
    if (observe_p) observer->probabilities(layer_, p.detach());
    if (emits_) probabilities = p;
    return output(apply_attention_probabilities(p, v, v_map).to(q.scalar_type()));
  }
  return output(grouped_attention(q, k, v, k_map, v_map, /*causal=*/true));
}

MlpImpl::MlpImpl(int64_t dim, int64_t hidden_dim, bool allocate) {
  gate_proj = register_module("gate_proj", Projection(dim, hidden_dim, false, allocate));
  up_proj = register_module("up_proj", Projection(dim, hidden_dim, false, allocate));
  down_proj = register_module("down_proj", Projection(hidden_dim, dim, false, allocate));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer, bool allocate) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.dim, c.norm_eps, allocate));
  self_attn = register_module("self_attn", Attention(c, layer, allocate));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.dim, c.norm_eps, allocate));
  mlp = register_module("mlp", Mlp(c.dim, c.hidden_dim, allocate));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const Rope& rope, int64_t start, torch::Tensor cache_k,
                                        torch::Tensor cache_v, torch::Tensor& probabilities, const LayerForward& extras) {
  const torch::Tensor h =
      x + self_attn->forward(input_layernorm(x), rope, start, cache_k, cache_v, probabilities, extras);
  return h + mlp(post_attention_layernorm(h));
}

BackboneImpl::BackboneImpl(const ModelConfig& c, bool allocate) {
  embed_tokens = register_module("embed_tokens", TokenEmbedding(c.vocab_size, c.dim, allocate));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.n_layers; ++l) layers->push_back(DecoderLayer(c, l, allocate));
  norm = register_module("norm", RMSNorm(c.dim, c.norm_eps, allocate));
}

LlamaImpl::LlamaImpl(const ModelConfig& config, bool allocate) : config_(config) {
  config_.validate("model config");
  model = register_module("model", Backbone(config_, allocate));
  if (!config_.tied_embeddings)
    lm_head = register_module("lm_head", Projection(config_.dim, config_.vocab_size, false, allocate));
  if (allocate) {
    torch::NoGradGuard no_grad;
    for (auto& p : parameters()) p.zero_();
  }
  rope_ = register_module("rotary", Rope(config_.head_dim, config_.max_seq_len, config_.rope_theta, config_.rope_scaling));
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& tokens, KVCache* cache) {
  ForwardOptions options;
  options.cache = cache;
  return forward(tokens, options);
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& tokens, const ForwardOptions& options) {
  KVCache* cache = options.cache;
  if (options.kv_weights && static_cast<int64_t>(options.kv_weights->size()) != config_.n_layers)
    fail("forward: K/V weights for ", options.kv_weights->size(), " layers, the model has ", config_.n_layers);
  if (tokens.dim() != 2) fail("forward: tokens must be [B, T], got ", tokens.dim(), " dims");
  const int64_t b = tokens.size(0), t = tokens.size(1);
  const int64_t start = cache ? cache->length : 0;
  if (start + t > config_.max_seq_len)
    fail("forward: ", start + t, " positions exceed the model's context of ", config_.max_seq_len);
  if (cache) {
    if (start + t > cache->capacity())
      fail("forward: ", start + t, " positions exceed the KV cache capacity of ", cache->capacity());
    if (cache->k.front().size(0) != b)
      fail("forward: batch ", b, " does not match the KV cache batch ", cache->k.front().size(0));
  }
  if (layer_weights) layer_weights->gather(-1, /*backward=*/false);
  torch::Tensor h = model->embed_tokens(tokens);
  // The residual stream is float32 whatever the weights are stored in.
  if (h.scalar_type() != torch::kFloat32) h = h.to(torch::kFloat32);
  if (layer_weights) layer_weights->release(-1);
  torch::Tensor probabilities;  // handed from a source layer to the layers that share its attention
  const bool recompute = activation_checkpointing && !cache && torch::GradMode::is_enabled();
  if (layer_weights && torch::GradMode::is_enabled() && !recompute)
    fail("forward: gathered layer weights (ZeRO-3) need activation checkpointing to train");
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    DecoderLayerImpl& layer = *model->layers[l]->as<DecoderLayer>();
    const LayerForward extras{options.kv_weights ? &(*options.kv_weights)[l] : nullptr, options.observer};
    if (recompute) {
      h = recomputed_layer_forward(layer, h, rope_, probabilities, extras, layer_weights, l);
      continue;
    }
    torch::Tensor ck, cv;
    if (cache) ck = cache->k[l], cv = cache->v[l];
    if (layer_weights) layer_weights->gather(l, /*backward=*/false);
    h = layer.forward(h, rope_, start, ck, cv, probabilities, extras);
    if (layer_weights) layer_weights->release(l);
  }
  if (layer_weights) layer_weights->gather(config_.n_layers, /*backward=*/false);
  h = model->norm(h);
  if (cache) cache->length = start + t;
  torch::Tensor logits = lm_head ? lm_head(h) : project(h, model->embed_tokens->weight);
  // Without autograd the head is done with; with it, backward still reads it
  // and the source releases it once its gradient is in.
  if (layer_weights) layer_weights->release(config_.n_layers);
  return logits;
}

KVCache LlamaImpl::make_cache(int64_t batch, int64_t capacity, torch::ScalarType dtype) const {
  if (capacity > config_.max_seq_len) capacity = config_.max_seq_len;
  const auto options = model->embed_tokens->weight.options().dtype(dtype);
  KVCache cache;
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    cache.k.push_back(torch::zeros({batch, config_.layout.n_k_heads(l), capacity, config_.head_dim}, options));
    cache.v.push_back(torch::zeros({batch, config_.layout.n_v_heads(l), capacity, config_.head_dim}, options));
  }
  return cache;
}

void LlamaImpl::load_state(const TensorMap& tensors, const std::string& source) {
  check_tensors(config_, tensors, source);
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) item.value().copy_(tensors.at(item.key()));
}

TensorMap LlamaImpl::state() const {
  TensorMap out;
  for (const auto& item : named_parameters()) out[item.key()] = item.value().detach();
  return out;
}

Checkpoint LlamaImpl::shared_checkpoint(torch::ScalarType storage_dtype) const {
  Checkpoint checkpoint;
  checkpoint.config = config_;
  checkpoint.storage_dtype = storage_dtype;
  for (const auto& [name, tensor] : state()) checkpoint.tensors[name] = tensor.to(torch::kCPU);
  return checkpoint;
}

Llama make_random_model(const ModelConfig& config, uint64_t seed) {
  Llama model(config);
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  const double residual = 0.02 / std::sqrt(2.0 * config.n_layers);
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor p = item.value();
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      p.zero_();
    } else if (p.dim() == 1) {
      p.fill_(1.0);
    } else if (name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos) {
      p.normal_(0.0, residual);
    } else {
      p.normal_(0.0, 0.02);
    }
  }
  return model;
}

Llama make_model_over(const Checkpoint& checkpoint, const std::string& source,
                         const std::function<bool(const std::string& name)>& trains) {
  check_tensors(checkpoint.config, checkpoint.tensors, source);
  Llama model(checkpoint.config, /*allocate=*/false);
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    const torch::Tensor& tensor = checkpoint.tensors.at(item.key());
    const bool train = trains && trains(item.key());
    // set_data: the parameter takes the tensor's storage (and dtype) in place of its placeholder.
    item.value().set_data(train ? tensor.to(torch::kCPU, torch::kFloat32, /*non_blocking=*/false, /*copy=*/true)
                                : tensor);
    item.value().set_requires_grad(train);
    // The checkpoint's copy of a trained weight is not read again while the
    // model trains: when it is file pages, the kernel may have them back.
    if (train) io::release_resident_pages(tensor);
  }
  model->eval();
  return model;
}

Llama make_model(const Checkpoint& checkpoint, const std::string& source) {
  return make_model_over(checkpoint, source, [](const std::string&) { return true; });
}

}  // namespace dha
