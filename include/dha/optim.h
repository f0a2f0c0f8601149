// AdamW with parameter groups and the warmup + cosine learning-rate schedule.
// Written out (not torch::optim) so that its state is explicit tensors that
// checkpoints store in safetensors and restore bit-exactly, and so that a group
// can take a negative learning rate (gradient ascent on Lagrange multipliers).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "dha/checkpoint.h"

namespace dha {

struct ParamGroup {
  std::string name;
  std::vector<std::pair<std::string, torch::Tensor>> params;  // unique names across groups
  double lr = 1e-4;            // peak rate; negative: ascent
  double weight_decay = 0.0;   // decoupled (AdamW)
  bool scheduled = true;       // follows the warmup/cosine factor
  bool clipped = true;         // included in gradient-norm clipping
};

// Every group's parameter tensors, in group order.
std::vector<torch::Tensor> parameters_of(const std::vector<ParamGroup>& groups);

// The coefficients of one AdamW update of one tensor.
struct AdamWUpdate {
  double lr = 0.0, weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double correction1 = 1.0, correction2 = 1.0;  // 1 - beta^step
};
// torch.optim.AdamW's update of p (fp32) from grad, in place on p, m and v: in
// one pass for contiguous fp32 CPU tensors, else in slices of at most 2^24
// elements. The ZeRO shards update through the same function, so that a
// sharded step computes bit for bit what the replicated one does.
void adamw_update(torch::Tensor& p, const torch::Tensor& grad, torch::Tensor& m, torch::Tensor& v,
                  const AdamWUpdate& u);
// The coefficients of update number `step` (from 1) of `group`'s tensors.
AdamWUpdate adamw_coefficients(const ParamGroup& group, double schedule_factor, int64_t step, double beta1,
                               double beta2, double eps);

class AdamW {
 public:
  AdamW(std::vector<ParamGroup> groups, double beta1, double beta2, double eps);

  // One update at lr = group.lr * (scheduled ? schedule_factor : 1).
  void step(double schedule_factor);
  // Releases every gradient (torch's set_to_none), so backward adopts new buffers.
  void zero_grad();
  // Clips the global L2 norm of the clipped groups' gradients to max_norm
  // (<= 0: no clipping) and returns the norm before clipping.
  double clip_grad_norm(double max_norm);

  int64_t steps() const { return steps_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // "exp_avg.<name>" and "exp_avg_sq.<name>" for every parameter.
  TensorMap state() const;
  void load_state(const TensorMap& state, int64_t steps, const std::string& source);

 private:
  std::vector<ParamGroup> groups_;
  double beta1_, beta2_, eps_;
  int64_t steps_ = 0;
  std::vector<std::vector<torch::Tensor>> exp_avg_, exp_avg_sq_;
};

// Linear warmup over warmup_steps, then cosine from 1 down to floor_ratio at total_steps.
// offset_steps > 0 continues a schedule that earlier training began (a conversion's
// fusion): the cosine spans offset_steps + total_steps and step 0 of this run sits at
// offset_steps on it; the warmup still ramps this run's first steps, whose optimizer
// state is fresh.
struct LrSchedule {
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  int64_t offset_steps = 0;
  double floor_ratio = 0.1;
  double factor(int64_t step) const;
};

}  // namespace dha
