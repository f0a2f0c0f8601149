// The training optimizer a recipe asks for.
#include "training_optimizer.h"

#include "replicated_optimizer.h"
#include "sharded_optimizer.h"

namespace dha::train_detail {

std::unique_ptr<TrainingOptimizer> make_training_optimizer(std::vector<ParamGroup> groups,
                                                           const TrainConfig& config, Distributed& dist) {
  if (config.zero > 0) return std::make_unique<ShardedOptimizer>(std::move(groups), config, dist);
  return std::make_unique<ReplicatedOptimizer>(std::move(groups), config, dist);
}

}  // namespace dha::train_detail
