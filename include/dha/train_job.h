// dha-train's whole job as one library call: load (or create) the model, read
// the shards, set up data parallelism, train, write the model, the metrics and
// the loss curve.
#pragma once

#include <string>
#include <vector>

#include "dha/memory_plan.h"
#include "dha/rank_environment.h"
#include "dha/train.h"

namespace dha {

// One source of training data: a directory of token shards (dha-tokenize's,
// or llm.c's / Megatron-LM's) and its weight in a mixture.
struct DataSource {
  std::string dir;
  double weight = 1.0;
};

// "DIR" or "DIR=WEIGHT" (dha-train --data): the weight after the last '=' when
// that is a positive number, else the whole is the directory.
DataSource parse_data_source(const std::string& arg);

struct TrainJob {
  std::string model_path;         // any format load_model reads; or
  std::string from_scratch_path;  // a JSON model description (model_config_from_json)
  std::string tokenizer_path;     // default: in/beside the model, else the data's
  std::vector<DataSource> data;   // one source, or a weighted mixture
  std::string out_dir;
  std::string teacher_path;       // optional distillation teacher
  std::string eval_text;          // held-out text file (dha-eval protocol); default: the data's heldout split
  bool resume = false;
  bool force = false;
  std::string dtype = "keep";     // model/ on disk: keep (the source's) | f32 | bf16 | f16
  bool plan_only = false;         // print the memory plan and return (reads only the model's headers)
  int plan_world_size = 0;        // with plan_only: the processes the run would use (0: $WORLD_SIZE or 1)
  TrainConfig config;
};

struct TrainJobResult {
  TrainResult train;
  std::string model_dir;  // out_dir/model, when training finished
};

TrainJobResult run_train_job(const TrainJob& job);

// The device a training run uses: --device, on CUDA the rank's local GPU.
torch::Device training_device(const TrainConfig& config, const RankEnvironment& ranks,
                              const DeviceInventory& inventory = DeviceInventory::current());

// The memory dha-train needs per rank for this job's model and recipe.
MemoryPlan train_memory_plan(const ModelConfig& model, const TrainConfig& config, int world_size, bool cuda,
                             bool teacher, torch::ScalarType teacher_dtype);

}  // namespace dha
