// The sharded AdamW update.
#include "sharded_adamw.h"

namespace dha::train_detail {

ShardedAdamW::ShardedAdamW(std::vector<ParamGroup> groups, ParameterSharder& sharder, double beta1,
                           double beta2, double eps)
    : groups_(std::move(groups)), sharder_(sharder), beta1_(beta1), beta2_(beta2), eps_(eps) {
  for (size_t i = 0; i < sharder_.size(); ++i) {
    exp_avg_.push_back(torch::zeros_like(sharder_.master(i)));
    exp_avg_sq_.push_back(torch::zeros_like(sharder_.master(i)));
  }
}

void ShardedAdamW::step(double schedule_factor, ShardedGradients& gradients) {
  torch::NoGradGuard no_grad;
  ++steps_;
  for (size_t i = 0; i < sharder_.size(); ++i) {
    const AdamWUpdate u =
        adamw_coefficients(groups_[sharder_.group(i)], schedule_factor, steps_, beta1_, beta2_, eps_);
    adamw_update(sharder_.master(i), gradients.take(i), exp_avg_[i], exp_avg_sq_[i], u);
  }
}

void ShardedAdamW::release() {
  for (auto& m : exp_avg_) m = torch::Tensor();
  for (auto& v : exp_avg_sq_) v = torch::Tensor();
}

}  // namespace dha::train_detail
