// AdamW (PyTorch's update rule, explicit state) and the learning-rate schedule.
#include "dha/optim.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <ATen/Parallel.h>

#include "dha/error.h"

namespace dha {

namespace {
// Elements per slice of the update (64 MiB of fp32): bounds its temporary.
constexpr int64_t kUpdateChunk = int64_t{1} << 24;
}  // namespace

std::vector<torch::Tensor> parameters_of(const std::vector<ParamGroup>& groups) {
  std::vector<torch::Tensor> out;
  for (const auto& group : groups)
    for (const auto& [name, p] : group.params) out.push_back(p);
  return out;
}

AdamW::AdamW(std::vector<ParamGroup> groups, double beta1, double beta2, double eps)
    : groups_(std::move(groups)), beta1_(beta1), beta2_(beta2), eps_(eps) {
  std::set<std::string> names;
  for (const auto& group : groups_) {
    exp_avg_.emplace_back();
    exp_avg_sq_.emplace_back();
    for (const auto& [name, p] : group.params) {
      if (!names.insert(name).second) fail("optimizer: parameter '", name, "' is in two groups");
      exp_avg_.back().push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous).to(torch::kFloat32));
      exp_avg_sq_.back().push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous).to(torch::kFloat32));
    }
  }
}

void AdamW::zero_grad() {
  // Released rather than zeroed (torch's set_to_none): backward then adopts
  // each new gradient buffer instead of adding it into a zeroed one, which
  // would hold a second gradient-sized temporary per tensor at a time.
  for (auto& group : groups_)
    for (auto& [name, p] : group.params) p.mutable_grad().reset();
}

double AdamW::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& group : groups_) {
    if (!group.clipped) continue;
    for (const auto& [name, p] : group.params)
      if (p.grad().defined()) norms.push_back(p.grad().to(torch::kFloat32).norm().pow(2));
  }
  if (norms.empty()) return 0.0;
  const double total = std::sqrt(torch::stack(norms).sum().item<double>());
  if (max_norm > 0 && total > max_norm && std::isfinite(total)) {
    const double scale = max_norm / (total + 1e-6);
    for (auto& group : groups_) {
      if (!group.clipped) continue;
      for (auto& [name, p] : group.params)
        if (p.grad().defined()) p.mutable_grad().mul_(scale);
    }
  }
  return total;
}

namespace {

// The update of a plain fp32 CPU tensor in one pass; false for others.
bool fused_cpu_update(torch::Tensor& p, const torch::Tensor& grad, torch::Tensor& m, torch::Tensor& v,
                      const AdamWUpdate& u) {
  auto plain = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous();
  };
  if (!plain(p) || !plain(grad) || !plain(m) || !plain(v)) return false;
  // One pass over the four arrays instead of eight tensor operations: the
  // update is memory-bound, and at 7B it is a large share of a CPU step. The
  // arithmetic is the tensor path's, element by element, in float.
  float* pd = p.data_ptr<float>();
  float* md = m.data_ptr<float>();
  float* vd = v.data_ptr<float>();
  const float* gd = grad.data_ptr<float>();
  const auto decay = static_cast<float>(1.0 - u.lr * u.weight_decay);
  const auto b1 = static_cast<float>(u.beta1), b2 = static_cast<float>(u.beta2);
  const auto a1 = static_cast<float>(1.0 - u.beta1), a2 = static_cast<float>(1.0 - u.beta2);
  const auto sqrt_c2 = static_cast<float>(std::sqrt(u.correction2)), eps = static_cast<float>(u.eps);
  const auto step = static_cast<float>(-u.lr / u.correction1);
  const bool decays = u.weight_decay != 0.0;
  at::parallel_for(0, p.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const float gk = gd[k];
      const float mk = md[k] * b1 + a1 * gk;
      const float vk = vd[k] * b2 + a2 * gk * gk;
      const float denom = std::sqrt(vk) / sqrt_c2 + eps;
      const float pk = decays ? pd[k] * decay : pd[k];
      pd[k] = pk + step * mk / denom;
      md[k] = mk;
      vd[k] = vk;
    }
  });
  return true;
}

}  // namespace

void adamw_update(torch::Tensor& p, const torch::Tensor& grad_in, torch::Tensor& m, torch::Tensor& v,
                  const AdamWUpdate& u) {
  torch::NoGradGuard no_grad;
  const torch::Tensor grad = grad_in.to(torch::kFloat32);
  if (fused_cpu_update(p, grad, m, v, u)) return;
  if (u.weight_decay != 0.0) p.mul_(1.0 - u.lr * u.weight_decay);
  m.mul_(u.beta1).add_(grad, 1.0 - u.beta1);
  v.mul_(u.beta2).addcmul_(grad, grad, 1.0 - u.beta2);
  // torch.optim.AdamW's update, over slices of at most kUpdateChunk
  // elements: the denominator is the only temporary, and slicing an
  // elementwise update changes no bit of it.
  const bool sliced = p.is_contiguous() && p.numel() > kUpdateChunk;
  const std::vector<torch::Tensor> ps = sliced ? p.view({-1}).split(kUpdateChunk) : std::vector<torch::Tensor>{p};
  const std::vector<torch::Tensor> ms = sliced ? m.view({-1}).split(kUpdateChunk) : std::vector<torch::Tensor>{m};
  const std::vector<torch::Tensor> vs = sliced ? v.view({-1}).split(kUpdateChunk) : std::vector<torch::Tensor>{v};
  for (size_t c = 0; c < ps.size(); ++c) {
    torch::Tensor denom = vs[c].sqrt();
    denom.div_(std::sqrt(u.correction2)).add_(u.eps);
    torch::Tensor target = ps[c];
    if (target.scalar_type() == torch::kFloat32) target.addcdiv_(ms[c], denom, -u.lr / u.correction1);
    else target.add_((ms[c] / denom).to(target.scalar_type()), -u.lr / u.correction1);
  }
}

AdamWUpdate adamw_coefficients(const ParamGroup& group, double schedule_factor, int64_t step, double beta1,
                               double beta2, double eps) {
  AdamWUpdate u;
  u.beta1 = beta1, u.beta2 = beta2, u.eps = eps;
  u.correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  u.correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  u.lr = group.lr * (group.scheduled ? schedule_factor : 1.0);
  u.weight_decay = group.weight_decay;
  return u;
}

void AdamW::step(double schedule_factor) {
  torch::NoGradGuard no_grad;
  ++steps_;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& group = groups_[g];
    const AdamWUpdate u = adamw_coefficients(group, schedule_factor, steps_, beta1_, beta2_, eps_);
    for (size_t i = 0; i < group.params.size(); ++i) {
      torch::Tensor p = group.params[i].second;
      if (!p.grad().defined()) continue;
      adamw_update(p, p.grad(), exp_avg_[g][i], exp_avg_sq_[g][i], u);
    }
  }
}

TensorMap AdamW::state() const {
  TensorMap out;
  for (size_t g = 0; g < groups_.size(); ++g)
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      out["exp_avg." + groups_[g].params[i].first] = exp_avg_[g][i];
      out["exp_avg_sq." + groups_[g].params[i].first] = exp_avg_sq_[g][i];
    }
  return out;
}

void AdamW::load_state(const TensorMap& state, int64_t steps, const std::string& source) {
  torch::NoGradGuard no_grad;
  for (size_t g = 0; g < groups_.size(); ++g)
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      auto restore = [&](const std::string& key, torch::Tensor& target) {
        const auto it = state.find(key);
        if (it == state.end()) fail(source, ": optimizer state '", key, "' is missing");
        if (it->second.sizes() != target.sizes())
          fail(source, ": optimizer state '", key, "' has the wrong shape (a checkpoint of another model?)");
        target.copy_(it->second);
      };
      restore("exp_avg." + groups_[g].params[i].first, exp_avg_[g][i]);
      restore("exp_avg_sq." + groups_[g].params[i].first, exp_avg_sq_[g][i]);
    }
  steps_ = steps;
}

double LrSchedule::factor(int64_t step) const {
  const double ramp = warmup_steps > 0 && step < warmup_steps ? static_cast<double>(step + 1) / warmup_steps : 1.0;
  const int64_t decay = std::max<int64_t>(1, offset_steps + total_steps - warmup_steps);
  const double progress = std::clamp(static_cast<double>(offset_steps + step - warmup_steps) / decay, 0.0, 1.0);
  return ramp * (floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + std::cos(M_PI * progress)));
}

}  // namespace dha
