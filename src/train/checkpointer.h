// The loop's checkpoints: what a checkpoint of a run records (its position,
// the task, the optimizer, the RNG state, the model and training configs), how
// it is written (by rank 0, or one file per rank when the optimizer is
// sharded), and the checks a resume must pass. The files are dha/training_state.h's.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "dha/train.h"
#include "dha/training_state.h"
#include "training_optimizer.h"

namespace dha::train_detail {

class Checkpointer {
 public:
  // Checkpoints under run.out_dir/checkpoints, recording run.meta and the recipe,
  // and for a mixture each source's position (meta "data_sources", from `sampler`).
  Checkpointer(const TrainRun& run, const TrainConfig& config, Distributed& dist,
               const SequenceSampler* sampler = nullptr);

  // Restores task, optimizer, RNG state, the position (result's steps, tokens
  // and last checkpoint) and the data cursor from the newest checkpoint every
  // rank can read, once check_resumable accepts it.
  void resume(TrainTask& task, TrainingOptimizer& optimizer, TrainResult& result, DataCursor& cursor);
  // Writes a checkpoint at result's position (collective); rank 0 records its
  // directory in result.last_checkpoint.
  void save(TrainTask& task, TrainingOptimizer& optimizer, TrainResult& result, const DataCursor& cursor);

 private:
  std::string root_;
  nlohmann::json meta_;  // run.meta, with the recipe as "train_config"
  int keep_;
  Distributed& dist_;
  const SequenceSampler* sampler_;
};

// Refuses, naming the checkpoint and what to change, one this run cannot
// continue: of another model (meta's "model_config") or other training options
// (its "train_config", beyond those that do not change what is computed) or
// another data mixture (its "data_mixture": sources and weights);
// sharded when the run is not, or the reverse; of another global batch; a
// replicated one also of another world size (a sharded one re-shards).
void check_resumable(const TrainingState& checkpoint, bool sharded_run, const nlohmann::json& meta,
                     int world_size);

}  // namespace dha::train_detail
