// Private to the training loop: the held-out NLL of the task's model, its
// documents split over the ranks and the sums reduced.
#pragma once

#include <cstdint>
#include <vector>

#include "dha/train.h"

namespace dha::train_detail {

// The first `max_docs` documents (0: all) scored at `step` / `tokens` of the run.
EvalPoint evaluate_held_out(TrainTask& task, const std::vector<std::vector<int32_t>>& docs, Distributed& dist,
                            const torch::Device& device, int64_t max_docs, int64_t step, int64_t tokens);

}  // namespace dha::train_detail
