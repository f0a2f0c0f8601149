// The training loop shared by dha-train (continued pre-training, distillation,
// pre-training from scratch) and the training stages of dha-convert: AdamW with
// warmup + cosine, clipping, gradient accumulation, data parallelism (replicated
// or ZeRO-sharded), periodic held-out evaluation, metrics.jsonl, checkpoints with
// exact resume, SIGINT/SIGTERM handling and a NaN/Inf guard. Including it gives
// the recipe (dha/train_config.h) and the task interface (dha/train_task.h) too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/data.h"
#include "dha/distributed.h"
#include "dha/memory_plan.h"
#include "dha/train_config.h"
#include "dha/train_task.h"

namespace dha {

struct EvalPoint {
  int64_t step = 0;
  int64_t tokens = 0;
  double mean_nll = 0.0;
  int64_t eval_tokens = 0;  // held-out tokens predicted (dha-eval's "tokens" on the same documents)
};

struct TrainRun {
  std::string out_dir;              // checkpoints/, metrics.jsonl live here
  nlohmann::json meta;              // recorded in every checkpoint (model config, recipe, ...)
  std::vector<std::vector<int32_t>> eval_docs;  // held-out documents (each BOS + tokens)
  bool resume = false;
  bool show_progress = true;
  std::string label = "train";
  std::string description;  // logged once the run's inputs are checked (resume compatibility included)
  // A checkpoint at the end of the run (the conversion's stages write none
  // unless their recipe asks for periodic ones).
  bool final_checkpoint = true;
  // When set: written to metrics.jsonl at the start, and the measured peak beside it at the end.
  std::optional<MemoryPlan> memory_plan;
};

struct TrainResult {
  int64_t steps = 0;        // total optimizer steps done (including before a resume)
  int64_t tokens = 0;
  double last_loss = 0.0;
  std::vector<EvalPoint> evals;
  bool stopped_early = false;  // by a signal or stop_after
  std::string last_checkpoint;
};

// Runs (or resumes) training. The sampler supplies sequences of seq_len + 1
// tokens; every rank reads a disjoint slice of each global batch.
TrainResult train(TrainTask& task, SequenceSampler& sampler, const TrainConfig& config,
                  Distributed& dist, const TrainRun& run);

}  // namespace dha
