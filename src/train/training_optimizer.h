// Private to the training loop: the optimizer and how gradients meet across
// ranks, as one interface with two implementations — ReplicatedOptimizer
// (--zero 0: AdamW on whole gradients averaged by all-reduce) and
// ShardedOptimizer (--zero 1|2|3: ZeRO, each rank owning a slice of the state).
#pragma once

#include <memory>
#include <vector>

#include "dha/distributed.h"
#include "dha/optim.h"
#include "dha/train.h"
#include "dha/training_state.h"

namespace dha::train_detail {

class TrainingOptimizer {
 public:
  virtual ~TrainingOptimizer() = default;

  // Once the task's state is final (after any resume), before the first step.
  virtual void attach(TrainTask& task) {}
  virtual void zero_grad() = 0;
  // After a micro-step's backward; `last`: the optimizer step's last one.
  virtual void after_backward(bool last) = 0;
  // Clips the global L2 norm of the clipped groups' gradients to max_norm
  // (<= 0: no clipping) and returns the norm before clipping.
  virtual double clip_grad_norm(double max_norm) = 0;
  virtual void step(double schedule_factor) = 0;
  // Held-out evaluation runs on whole weights (ZeRO-3 gathers them for its duration).
  virtual void before_eval() {}
  virtual void after_eval() {}
  // The end of training (also an early stop): the model is then an ordinary
  // one, every weight whole on every rank.
  virtual void finish() {}

  // Checkpoints. Whether the state is sharded over the ranks (its checkpoint
  // one file per rank and a manifest, see dha/training_state.h).
  virtual bool sharded() const = 0;
  // Fills `state`'s tensors with the task's (those a sharded optimizer does
  // not hold), its optimizer state and ZeRO manifest (null when replicated);
  // returns this rank's shard tensors (none when replicated).
  virtual TensorMap save_state(TrainTask& task, TrainingState& state) = 0;
  // Restores the task's tensors and this optimizer from a checkpoint the
  // resume checks accepted.
  virtual void load_state(TrainTask& task, const TrainingState& state) = 0;
};

// The one of config.zero; groups' parameters equal on every rank.
std::unique_ptr<TrainingOptimizer> make_training_optimizer(std::vector<ParamGroup> groups,
                                                           const TrainConfig& config, Distributed& dist);

}  // namespace dha::train_detail
