// ZeRO's reduce-scatter of the gradients, and their clipping over the ranks.
#include "sharded_gradients.h"

#include <cmath>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace dha::train_detail {
namespace {

struct GradReadyHook : torch::autograd::PostAccumulateGradHook {
  GradReadyHook(ShardedGradients* owner, size_t unit) : owner(owner), unit(unit) {}
  void operator()(const torch::autograd::Variable&) override { owner->gradient_ready(unit); }
  ShardedGradients* owner;
  size_t unit;
};

}  // namespace

ShardedGradients::ShardedGradients(ParameterSharder& sharder, const std::vector<ParamGroup>& groups,
                                   int stage, Distributed& dist)
    : sharder_(sharder),
      stage_(stage),
      dist_(dist),
      reduced_(sharder.size()),
      reduced_in_micro_step_(sharder.size(), false) {
  for (size_t i = 0; i < sharder_.size(); ++i) clipped_.push_back(groups[sharder_.group(i)].clipped);
  if (stage_ >= 2)
    for (size_t i = 0; i < sharder_.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(sharder_.parameter(i),
                                                     std::make_unique<GradReadyHook>(this, i));
}

ShardedGradients::~ShardedGradients() {
  if (stage_ >= 2)
    for (size_t i = 0; i < sharder_.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(sharder_.parameter(i), nullptr);
}

void ShardedGradients::zero_grad() {
  for (size_t i = 0; i < sharder_.size(); ++i) {
    reduced_[i] = torch::Tensor();
    reduced_in_micro_step_[i] = false;
    sharder_.parameter(i).mutable_grad().reset();
  }
}

void ShardedGradients::gradient_ready(size_t unit) {
  torch::NoGradGuard no_grad;
  torch::Tensor& parameter = sharder_.parameter(unit);
  const torch::Tensor grad = parameter.grad();
  if (!grad.defined()) return;
  // Released, so that backward's next gradient of this parameter is a fresh tensor.
  parameter.mutable_grad().reset();
  reduce(unit, grad);
}

void ShardedGradients::reduce(size_t unit, const torch::Tensor& grad) {
  const torch::Tensor& master = sharder_.master(unit);
  const int64_t padded = sharder_.padded_numel(unit);
  torch::Tensor whole;
  if (grad.defined() && sharder_.numel(unit) == padded && grad.is_contiguous() &&
      grad.scalar_type() == torch::kFloat32) {
    whole = grad.reshape({-1});  // reduced from backward's own buffer, no copy
  } else {
    whole = torch::zeros({padded}, master.options());
    if (grad.defined()) whole.narrow(0, 0, sharder_.numel(unit)).copy_(grad.reshape({-1}));
  }
  torch::Tensor mine = torch::empty({master.numel()}, master.options());
  dist_.reduce_scatter_mean(mine, whole);
  reduced_in_micro_step_[unit] = true;
  if (reduced_[unit].defined())
    reduced_[unit].add_(mine);
  else
    reduced_[unit] = std::move(mine);
  sharder_.gradient_reduced(unit);
}

void ShardedGradients::after_backward(bool last) {
  torch::NoGradGuard no_grad;
  if (stage_ == 1) {
    if (!last) return;  // the whole gradients accumulate in .grad until the step
    for (size_t i = 0; i < sharder_.size(); ++i) gradient_ready(i);
  }
  // Parameters backward gave no gradient join the reduction as zeros, in unit
  // order on every rank: each rank takes part in every collective.
  for (size_t i = 0; i < sharder_.size(); ++i) {
    if (!reduced_in_micro_step_[i]) reduce(i, torch::Tensor());
    reduced_in_micro_step_[i] = false;
  }
}

double ShardedGradients::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> squares;
  for (size_t i = 0; i < reduced_.size(); ++i)
    if (clipped_[i] && reduced_[i].defined()) squares.push_back(reduced_[i].norm().pow(2));
  // Summed as AdamW::clip_grad_norm sums its tensors' squares, so that one rank computes what ZeRO-0 does.
  const double local = squares.empty() ? 0.0 : torch::stack(squares).sum().item<double>();
  const double total = std::sqrt(dist_.sum({local})[0]);
  if (max_norm > 0 && total > max_norm && std::isfinite(total)) {
    const double scale = max_norm / (total + 1e-6);
    for (size_t i = 0; i < reduced_.size(); ++i)
      if (clipped_[i] && reduced_[i].defined()) reduced_[i].mul_(scale);
  }
  return total;
}

torch::Tensor ShardedGradients::take(size_t unit) {
  torch::Tensor grad = std::move(reduced_[unit]);
  reduced_[unit] = torch::Tensor();
  return grad.defined() ? grad : torch::zeros_like(sharder_.master(unit));
}

void ShardedGradients::release() {
  for (auto& grad : reduced_) grad = torch::Tensor();
}

}  // namespace dha::train_detail
