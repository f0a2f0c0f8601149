// Activation checkpointing as a custom autograd Function (LibTorch has no
// torch::utils::checkpoint): forward runs the layer without recording a
// graph; backward runs it again with one, and backpropagates through that.
#include "layer_recompute.h"

#include <array>

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

namespace dha {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The autocast state a recomputation must repeat.
struct AutocastState {
  bool enabled = false;
  at::ScalarType dtype = at::kBFloat16;

  static AutocastState current() {
    return {at::autocast::is_autocast_enabled(at::kCUDA), at::autocast::get_autocast_dtype(at::kCUDA)};
  }
  void apply() const {
    at::autocast::set_autocast_enabled(at::kCUDA, enabled);
    at::autocast::set_autocast_dtype(at::kCUDA, dtype);
  }
};

// The K/V weights a layer uses in place of its own (the fusion stage's fused
// weights) are computed outside the layer, so they are inputs of the
// recomputed Function and their gradients leave through it. Otherwise the
// recomputation's backward would run into the graph that made them, which the
// outer backward then finds already freed.
constexpr size_t kKVWeights = 4;
std::array<torch::Tensor, kKVWeights> as_array(const KVWeights* w) {
  if (!w) return {};
  return {w->k_weight, w->k_bias, w->v_weight, w->v_bias};
}
KVWeights from_array(const std::array<torch::Tensor, kKVWeights>& a) { return {a[0], a[1], a[2], a[3]}; }

// Inputs: x, the probabilities the layer reads (an empty tensor unless it
// shares attention: autograd Functions take defined tensors) and the four
// K/V weights (empty when the layer's own are used). Outputs: the layer's
// output, and the probabilities it emits when it is the source of a shared span.
struct RecomputedLayer : torch::autograd::Function<RecomputedLayer> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& probabilities_in,
                               const torch::Tensor& k_weight, const torch::Tensor& k_bias, const torch::Tensor& v_weight,
                               const torch::Tensor& v_bias, DecoderLayerImpl* layer, const Rope* rope,
                               AttentionObserver* observer, LayerWeightSource* weights, int64_t index) {
    ctx->saved_data["layer"] = reinterpret_cast<int64_t>(layer);
    ctx->saved_data["rope"] = reinterpret_cast<int64_t>(rope);
    ctx->saved_data["weights"] = reinterpret_cast<int64_t>(weights);
    ctx->saved_data["index"] = index;
    const AutocastState autocast = AutocastState::current();
    ctx->saved_data["autocast"] = autocast.enabled;
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(autocast.dtype);
    ctx->save_for_backward({x, probabilities_in, k_weight, k_bias, v_weight, v_bias});
    torch::Tensor probabilities = layer->self_attn->shares_attention() ? probabilities_in : torch::Tensor();
    auto given = [](const torch::Tensor& t) { return t.numel() > 0 ? t : torch::Tensor(); };
    const KVWeights kv{given(k_weight), given(k_bias), given(v_weight), given(v_bias)};
    if (weights) weights->gather(index, /*backward=*/false);
    // The observer sees the forward run only, not the recomputation.
    const torch::Tensor out = layer->forward(x, *rope, 0, {}, {}, probabilities, {&kv, observer});
    if (weights) weights->release(index);
    if (layer->self_attn->emits_probabilities()) return {out, probabilities};
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(ctx->saved_data["layer"].toInt());
    auto* rope = reinterpret_cast<const Rope*>(ctx->saved_data["rope"].toInt());
    auto* weights = reinterpret_cast<LayerWeightSource*>(ctx->saved_data["weights"].toInt());
    const int64_t index = ctx->saved_data["index"].toInt();
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor x = saved[0].detach().requires_grad_(saved[0].requires_grad());
    const bool reads = layer->self_attn->shares_attention();
    const bool probabilities_need_grad = reads && saved[1].requires_grad();
    torch::Tensor probabilities_in = reads ? saved[1].detach().requires_grad_(probabilities_need_grad) : torch::Tensor();
    // The K/V weights, detached: the recomputation's backward stops at them.
    std::array<torch::Tensor, kKVWeights> kv;
    for (size_t i = 0; i < kKVWeights; ++i) {
      const torch::Tensor& v = saved[2 + i];
      if (v.numel() > 0) kv[i] = v.detach().requires_grad_(v.requires_grad());
    }
    const KVWeights kv_weights = from_array(kv);

    const AutocastState outer = AutocastState::current();
    AutocastState{ctx->saved_data["autocast"].toBool(),
                  static_cast<at::ScalarType>(ctx->saved_data["autocast_dtype"].toInt())}
        .apply();
    variable_list outputs, output_grads;
    if (weights) weights->gather(index, /*backward=*/true);
    {
      torch::AutoGradMode enable(true);
      torch::Tensor probabilities = probabilities_in;
      outputs.push_back(layer->forward(x, *rope, 0, {}, {}, probabilities, {&kv_weights, nullptr}));
      output_grads.push_back(grads[0]);
      if (layer->self_attn->emits_probabilities() && grads.size() > 1 && grads[1].defined()) {
        outputs.push_back(probabilities);
        output_grads.push_back(grads[1]);
      }
      // Into the layer's parameters (accumulated in their .grad, as without
      // recomputation) and into the detached inputs, which are returned.
      torch::autograd::backward(outputs, output_grads);
    }
    outputs.clear();  // the recomputed graph, before the weights it read go
    if (weights) weights->release(index);
    outer.apply();
    // The recomputation's low-precision copies of the weights go with it:
    // autocast clears its cache only when an outermost autocast region ends,
    // so the next step's forward would otherwise find this step's copies.
    if (ctx->saved_data["autocast"].toBool()) at::autocast::clear_cache();
    variable_list input_grads{x.requires_grad() ? x.grad() : torch::Tensor(),
                              probabilities_need_grad ? probabilities_in.grad() : torch::Tensor()};
    for (const auto& w : kv) input_grads.push_back(w.defined() && w.requires_grad() ? w.grad() : torch::Tensor());
    for (int i = 0; i < 5; ++i) input_grads.emplace_back();  // layer, rope, observer, weights, index
    return input_grads;
  }
};

}  // namespace

torch::Tensor recomputed_layer_forward(DecoderLayerImpl& layer, const torch::Tensor& x, const Rope& rope,
                                       torch::Tensor& probabilities, const LayerForward& extras,
                                       LayerWeightSource* weights, int64_t index) {
  const torch::Tensor probabilities_in =
      layer.self_attn->shares_attention() ? probabilities : torch::empty({0}, x.options());
  std::array<torch::Tensor, kKVWeights> kv = as_array(extras.kv_weights);
  for (auto& w : kv)
    if (!w.defined()) w = torch::empty({0}, x.options());
  const variable_list out = RecomputedLayer::apply(x, probabilities_in, kv[0], kv[1], kv[2], kv[3], &layer, &rope,
                                                   extras.observer, weights, index);
  if (out.size() > 1) probabilities = out[1];
  return out[0];
}

}  // namespace dha
