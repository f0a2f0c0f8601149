// AdamW on whole gradients, all-reduced over the ranks.
#include "replicated_optimizer.h"

namespace dha::train_detail {

ReplicatedOptimizer::ReplicatedOptimizer(std::vector<ParamGroup> groups, const TrainConfig& config,
                                         Distributed& dist)
    : params_(parameters_of(groups)),
      bucket_bytes_(config.bucket_mb << 20),
      dist_(dist),
      adam_(std::move(groups), config.beta1, config.beta2, config.eps) {}

void ReplicatedOptimizer::after_backward(bool last) {
  if (last) dist_.average_gradients(params_, bucket_bytes_);
}

TensorMap ReplicatedOptimizer::save_state(TrainTask& task, TrainingState& state) {
  state.tensors = task.state();
  state.optimizer = adam_.state();
  return {};
}

void ReplicatedOptimizer::load_state(TrainTask& task, const TrainingState& state) {
  task.load_state(state.tensors, state.path);
  adam_.load_state(state.optimizer, state.step, state.path);
}

}  // namespace dha::train_detail
