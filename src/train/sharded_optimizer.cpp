// The ZeRO optimizer: sharder, gradients and AdamW in step, and their checkpoints.
#include "sharded_optimizer.h"

#include "dha/error.h"
#include "reshard_reader.h"
#include "shard_layout.h"

namespace dha::train_detail {
namespace {

int checked_stage(int64_t stage) {
  if (stage < 1 || stage > 3) fail("ZeRO stage ", stage, " is not 1, 2 or 3");
  return static_cast<int>(stage);
}

}  // namespace

ShardedOptimizer::ShardedOptimizer(std::vector<ParamGroup> groups, const TrainConfig& config,
                                   Distributed& dist)
    : stage_(checked_stage(config.zero)),
      dist_(dist),
      sharder_(groups, dist),
      gradients_(sharder_, groups, stage_, dist),
      adamw_(std::move(groups), sharder_, config.beta1, config.beta2, config.eps) {}

void ShardedOptimizer::attach(TrainTask& task) {
  if (stage_ < 3) return;
  sharder_.attach(task.model(), [&](const std::string& name) { return task.reads_outside_forward(name); });
}

void ShardedOptimizer::step(double schedule_factor) {
  adamw_.step(schedule_factor, gradients_);
  sharder_.all_gather_whole();
}

void ShardedOptimizer::finish() {
  adamw_.release();
  gradients_.release();
  sharder_.make_whole();
}

TensorMap ShardedOptimizer::save_state(TrainTask& task, TrainingState& state) {
  for (const auto& [name, tensor] : task.state())
    if (!sharder_.names().count(name)) state.tensors[name] = tensor;
  state.zero = {{"stage", stage_}, {"world_size", dist_.world_size()}, {"units", sharder_.manifest_units()}};
  TensorMap shard;
  for (size_t i = 0; i < sharder_.size(); ++i) {
    shard[shard_tensor_name(i, "weights")] = sharder_.master(i);
    shard[shard_tensor_name(i, "exp_avg")] = adamw_.exp_avg(i);
    shard[shard_tensor_name(i, "exp_avg_sq")] = adamw_.exp_avg_sq(i);
  }
  return shard;
}

void ShardedOptimizer::load_state(TrainTask& task, const TrainingState& state) {
  torch::NoGradGuard no_grad;
  ReshardReader reader(state, sharder_.manifest_units(), dist_.rank(), dist_.world_size());
  for (size_t i = 0; i < sharder_.size(); ++i) {
    reader.read(i, "weights", sharder_.master(i));
    reader.read(i, "exp_avg", adamw_.exp_avg(i));
    reader.read(i, "exp_avg_sq", adamw_.exp_avg_sq(i));
  }
  adamw_.set_steps(state.step);
  sharder_.all_gather_whole();  // every trained weight whole and restored
  // The task's other state; its trained weights restore to themselves.
  TensorMap tensors = state.tensors;
  for (size_t i = 0; i < sharder_.size(); ++i) tensors[sharder_.name(i)] = sharder_.parameter(i).detach();
  task.load_state(tensors, state.path);
}

}  // namespace dha::train_detail
