// dha-train's output directory: whether a run may use it (a fresh run needs a
// new one, or --force to replace it; a resumed one the old one), what it starts
// with (train_config.json, the resolved recipe) and the trained model it ends
// with (model/). Rank 0's alone: it creates the directory, and another rank
// could see it appear.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "dha/model.h"
#include "dha/tokenizer.h"
#include "dha/train_job.h"

namespace dha::train_detail {

// Refuses a directory the run may not use, before anything heavy is loaded.
void check_output_directory(const TrainJob& job);
// A fresh run's directory (an old one removed under --force) with train_config.json:
// the recipe, and under "_resolved" what the run resolved (model, data, world, device, teacher).
void start_output_directory(const TrainJob& job, const TrainConfig& config, const nlohmann::json& resolved);
// out_dir/model: a dha directory of the model's own tensors (no copy) in `dtype`,
// with the tokenizer when there is one. Returns its path.
std::string save_trained_model(const std::string& out_dir, Llama& model, const Tokenizer* tokenizer,
                               torch::ScalarType dtype);

}  // namespace dha::train_detail
