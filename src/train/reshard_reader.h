// Re-sharding on resume: this rank's slices of the ZeRO units read out of a
// sharded checkpoint written by any number of ranks, each slice copied from
// the old ranks' slices that cover it (shard_layout.h), so that a run resumes
// on another world size with the same global batch.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "dha/training_state.h"

namespace dha::io {
class SafetensorsFile;
}

namespace dha::train_detail {

class ReshardReader {
 public:
  // Refuses a replicated checkpoint, and one whose units are not `units`
  // (this run's, ParameterSharder::manifest_units) or whose shard files do not
  // match its world size. `state` must outlive the reader.
  ReshardReader(const TrainingState& state, const nlohmann::json& units, int rank, int world);
  ~ReshardReader();

  // target [shard of this world]: this rank's elements of unit `unit`'s
  // `part` ("weights", "exp_avg", "exp_avg_sq"), zero past the unit's end.
  void read(size_t unit, const std::string& part, torch::Tensor& target);

 private:
  io::SafetensorsFile& file(int old_rank);

  const TrainingState& state_;
  std::vector<int64_t> numels_;  // per unit
  int rank_, world_, old_world_;
  std::map<int, std::unique_ptr<io::SafetensorsFile>>
      files_;  // the old ranks' files this rank reads, opened once
};

// The ranks of a sharded checkpoint (manifest `zero`) whose files rank `rank`
// of `world` reads to restore its slices.
std::vector<int> shards_to_read(const nlohmann::json& zero, int rank, int world);

}  // namespace dha::train_detail
