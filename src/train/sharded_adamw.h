// AdamW on this rank's slices: the sharder's fp32 master weights, and the
// only AdamW moments of those slices. The update is adamw_update, the
// replicated AdamW's own, so a slice changes bit for bit as its elements
// change in the whole tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "dha/optim.h"
#include "parameter_sharder.h"
#include "sharded_gradients.h"

namespace dha::train_detail {

class ShardedAdamW {
 public:
  ShardedAdamW(std::vector<ParamGroup> groups, ParameterSharder& sharder, double beta1, double beta2,
               double eps);

  // One update of every slice from its reduced gradient (taken from `gradients`);
  // the whole weights are the sharder's to gather.
  void step(double schedule_factor, ShardedGradients& gradients);
  // Updates done so far; a resumed run continues the count of its checkpoint.
  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }
  torch::Tensor& exp_avg(size_t unit) { return exp_avg_.at(unit); }
  torch::Tensor& exp_avg_sq(size_t unit) { return exp_avg_sq_.at(unit); }
  // The end of training: the moments go.
  void release();

 private:
  std::vector<ParamGroup> groups_;
  ParameterSharder& sharder_;
  double beta1_, beta2_, eps_;
  int64_t steps_ = 0;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;  // [shard] per unit
};

}  // namespace dha::train_detail
