// Projections and the token embedding: weights that may be adopted from a
// checkpoint without a copy, and frozen low-precision weights computed in the
// activations' dtype one matrix at a time.
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/nn/functional/linear.h>

#include "dha/model.h"

namespace dha {
namespace {

torch::Tensor placeholder_or(bool allocate, std::vector<int64_t> shape) {
  // A placeholder holds no memory: make_model_over puts the real tensor in its place.
  return allocate ? torch::zeros(shape) : torch::empty({0});
}

// y = x W^T + b with a frozen W stored in a lower precision than x: the fp32
// copy of W lives only while one matrix product runs, in forward and in
// backward (where autograd would otherwise keep the cast copy of every layer
// from forward until backward).
struct FrozenLowPrecisionLinear : torch::autograd::Function<FrozenLowPrecisionLinear> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight) {
    ctx->save_for_backward({weight});
    return torch::nn::functional::linear(x, weight.to(x.scalar_type()));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const torch::Tensor weight = ctx->get_saved_variables()[0];
    return {grad[0].matmul(weight.to(grad[0].scalar_type())), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const bool autocast = x.is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA);
  if (weight.scalar_type() == x.scalar_type() || autocast) return torch::nn::functional::linear(x, weight, bias);
  const auto dtype = x.scalar_type();
  if (!weight.requires_grad() && (!bias.defined() || !bias.requires_grad())) {
    const torch::Tensor y = FrozenLowPrecisionLinear::apply(x, weight);
    return bias.defined() ? y + bias.to(dtype) : y;
  }
  return torch::nn::functional::linear(x, weight.to(dtype), bias.defined() ? bias.to(dtype) : bias);
}

ProjectionImpl::ProjectionImpl(int64_t in, int64_t out, bool with_bias, bool allocate) {
  weight = register_parameter("weight", placeholder_or(allocate, {out, in}));
  if (with_bias) bias = register_parameter("bias", placeholder_or(allocate, {out}));
}

torch::Tensor ProjectionImpl::forward(const torch::Tensor& x) { return project(x, weight, bias); }

TokenEmbeddingImpl::TokenEmbeddingImpl(int64_t vocab, int64_t dim, bool allocate) {
  weight = register_parameter("weight", placeholder_or(allocate, {vocab, dim}));
}

torch::Tensor TokenEmbeddingImpl::forward(const torch::Tensor& tokens) { return torch::embedding(weight, tokens); }

}  // namespace dha
