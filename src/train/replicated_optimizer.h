// Replicated data parallelism (--zero 0): every rank holds the whole training
// state and runs AdamW on whole gradients, averaged over the ranks by bucketed
// all-reduce after the step's last micro-step.
#pragma once

#include <vector>

#include "training_optimizer.h"

namespace dha::train_detail {

class ReplicatedOptimizer : public TrainingOptimizer {
 public:
  ReplicatedOptimizer(std::vector<ParamGroup> groups, const TrainConfig& config, Distributed& dist);

  void zero_grad() override { adam_.zero_grad(); }
  void after_backward(bool last) override;
  double clip_grad_norm(double max_norm) override { return adam_.clip_grad_norm(max_norm); }
  void step(double schedule_factor) override { adam_.step(schedule_factor); }

  bool sharded() const override { return false; }
  TensorMap save_state(TrainTask& task, TrainingState& state) override;
  void load_state(TrainTask& task, const TrainingState& state) override;

 private:
  std::vector<torch::Tensor> params_;
  int64_t bucket_bytes_;
  Distributed& dist_;
  AdamW adam_;
};

}  // namespace dha::train_detail
