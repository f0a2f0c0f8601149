// metrics.jsonl: its lines, and the truncation a resumed run starts with.
#include "metrics_log.h"

#include <filesystem>
#include <sstream>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/memory.h"

namespace dha::train_detail {
using nlohmann::json;

namespace {

// Keeps the lines up to `step`: what a resumed run would otherwise log twice.
void truncate_after(const std::string& path, int64_t step) {
  if (!std::filesystem::exists(path)) return;
  std::istringstream in(io::read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      if (json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const json::exception&) {
      // a torn last line from a killed run
    }
  }
  io::write_file_atomic(path, kept);
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path, bool main, std::optional<int64_t> resumed_at) : main_(main) {
  if (!main_) return;
  if (resumed_at) truncate_after(path, *resumed_at);
  out_.open(path, std::ios::app);
  if (!out_) fail(path, ": cannot open for writing");
}

void MetricsLog::write(const json& line) {
  if (main_) out_ << line.dump() << "\n" << std::flush;
}

void MetricsLog::write_step(const StepRecord& r) {
  json line = {{"step", r.step}, {"tokens", r.tokens},       {"loss", r.loss},
               {"lr", r.lr},     {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s}};
  if (r.mfu) line["mfu"] = *r.mfu;
  for (const auto& [key, value] : r.task_metrics) line[key] = value;
  write(line);
}

void MetricsLog::write_eval(const EvalPoint& point) {
  write({{"event", "eval"},
         {"step", point.step},
         {"tokens", point.tokens},
         {"eval_nll", point.mean_nll},
         {"eval_tokens", point.eval_tokens}});
}

void MetricsLog::write_data_mixture(const nlohmann::json& sources, int64_t step) {
  write({{"event", "data_mixture"}, {"step", step}, {"sources", sources}});
}

void MetricsLog::write_memory_plan(const MemoryPlan& plan, int64_t step) {
  json line = plan.to_json();
  line["event"] = "memory_plan";
  line["step"] = step;
  write(line);
}

void MetricsLog::write_memory_peaks(int64_t step, const torch::Device& device,
                                    const std::optional<MemoryPlan>& plan) {
  write({{"event", "memory"},
         {"step", step},
         {"peak_rss_bytes", peak_rss_bytes()},
         {"peak_tensor_bytes", MemoryMeter::installed() ? MemoryMeter::peak_bytes() : 0},
         {"device_peak_bytes", device_peak_bytes(device)},
         {"planned_bytes", plan ? plan->total() : 0}});
}

}  // namespace dha::train_detail
