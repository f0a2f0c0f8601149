// ZeRO-sharded data parallelism (--zero 1|2|3) on c10d: the parameter sharder,
// the reduce-scattered gradients and the sharded AdamW together, saved as one
// file of slices per rank plus the manifest of the units, and re-sharded from
// such a checkpoint of any world size.
//   stage 1: the fp32 master weights and AdamW moments are sharded;
//   stage 2: also the gradients, each reduced as backward produces it;
//   stage 3: also the weights, gathered per part of the model as it runs.
#pragma once

#include <vector>

#include "parameter_sharder.h"
#include "sharded_adamw.h"
#include "sharded_gradients.h"
#include "training_optimizer.h"

namespace dha::train_detail {

class ShardedOptimizer : public TrainingOptimizer {
 public:
  ShardedOptimizer(std::vector<ParamGroup> groups, const TrainConfig& config, Distributed& dist);

  // Stage 3: the model gathers its parts from the sharder, except the weights
  // the task reads outside the forward.
  void attach(TrainTask& task) override;
  void zero_grad() override { gradients_.zero_grad(); }
  void after_backward(bool last) override { gradients_.after_backward(last); }
  double clip_grad_norm(double max_norm) override { return gradients_.clip_grad_norm(max_norm); }
  void step(double schedule_factor) override;
  void before_eval() override { sharder_.gather_everything(); }
  void after_eval() override { sharder_.release_everything(); }
  // The optimizer state goes first, then every weight is made whole.
  void finish() override;

  bool sharded() const override { return true; }
  TensorMap save_state(TrainTask& task, TrainingState& state) override;
  void load_state(TrainTask& task, const TrainingState& state) override;

 private:
  int stage_;
  Distributed& dist_;
  ParameterSharder sharder_;
  ShardedGradients gradients_;
  ShardedAdamW adamw_;
};

}  // namespace dha::train_detail
