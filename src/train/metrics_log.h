// metrics.jsonl, a run's machine-readable record, written by rank 0 only: a
// line per logged step, per held-out evaluation, the memory plan at the start
// and the measured peaks at the end. Every key the file holds is written here.
#pragma once

#include <fstream>
#include <map>
#include <optional>
#include <string>

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "dha/memory_plan.h"
#include "dha/train.h"

namespace dha::train_detail {

// One optimizer step as its metrics line holds it.
struct StepRecord {
  int64_t step = 0, tokens = 0;
  double loss = 0.0, lr = 0.0, grad_norm = 0.0, tokens_per_s = 0.0;
  std::optional<double> mfu;                   // on a GPU of known peak
  std::map<std::string, double> task_metrics;  // the task's scalars (lm_loss, kl, ...)
};

class MetricsLog {
 public:
  // A resumed run (`resumed_at`: its checkpoint's step) first drops the lines
  // after that step, so the file reads as one uninterrupted run.
  MetricsLog(const std::string& path, bool main, std::optional<int64_t> resumed_at);
  void write_step(const StepRecord& record);
  void write_eval(const EvalPoint& point);
  void write_memory_plan(const MemoryPlan& plan, int64_t step);
  // A mixture's sources: dir, weight, share of the sequences.
  void write_data_mixture(const nlohmann::json& sources, int64_t step);
  // The measured peaks beside the plan (the counted CPU tensors when the meter is installed).
  void write_memory_peaks(int64_t step, const torch::Device& device, const std::optional<MemoryPlan>& plan);

 private:
  void write(const nlohmann::json& line);
  bool main_;
  std::ofstream out_;
};

}  // namespace dha::train_detail
