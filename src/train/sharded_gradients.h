// ZeRO's gradients: each parameter's gradient reduce-scattered (the mean over
// the ranks) into this rank's slice of its unit, and the whole gradient freed.
//   stage 1: the whole gradients accumulate in .grad until the step's last
//            micro-step, then are reduced one parameter after another;
//   stages 2 and 3: each is reduced the moment backward has produced it (a
//            post-accumulate hook per parameter), so that at most one whole
//            gradient exists beyond the ones backward is computing.
#pragma once

#include <vector>

#include "dha/distributed.h"
#include "dha/optim.h"
#include "parameter_sharder.h"

namespace dha::train_detail {

class ShardedGradients {
 public:
  // Stages 2 and 3 install a hook on each of the sharder's parameters (removed on destruction).
  ShardedGradients(ParameterSharder& sharder, const std::vector<ParamGroup>& groups, int stage,
                   Distributed& dist);
  ~ShardedGradients();
  ShardedGradients(const ShardedGradients&) = delete;
  ShardedGradients& operator=(const ShardedGradients&) = delete;

  void zero_grad();
  // After a micro-step's backward; `last`: the optimizer step's last one.
  void after_backward(bool last);
  // The global L2 norm of the clipped groups' gradients (the slices' squares
  // summed over ranks), clipped to max_norm (<= 0: no clipping).
  double clip_grad_norm(double max_norm);
  // This rank's reduced gradient slice of `unit` for the step (zeros when it
  // got none); released here.
  torch::Tensor take(size_t unit);
  // The end of training: every reduced gradient goes.
  void release();

  // Called by the post-accumulate hook of `unit`'s parameter.
  void gradient_ready(size_t unit);

 private:
  // Reduce-scatters `grad` (undefined: zeros) into the unit's slice.
  void reduce(size_t unit, const torch::Tensor& grad);

  ParameterSharder& sharder_;
  std::vector<bool> clipped_;  // per unit: its group is clipped
  int stage_;
  Distributed& dist_;
  std::vector<torch::Tensor> reduced_;  // [shard] per unit: the step's reduced gradient so far
  std::vector<bool> reduced_in_micro_step_;
};

}  // namespace dha::train_detail
