// Private to the conversion: what the stages share (the loaded inputs) and the
// stages themselves, each returning a typed result that the report is built from.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/align.h"
#include "dha/checkpoint.h"
#include "dha/convert.h"
#include "dha/data.h"
#include "dha/distributed.h"
#include "dha/fusion.h"
#include "dha/io/atomic_file.h"
#include "dha/memory_plan.h"
#include "dha/model.h"
#include "dha/search.h"
#include "dha/shared_attention.h"
#include "dha/tokenizer.h"

namespace dha::convert {

// Wall time and memory of one stage, for the report.
struct StageTiming {
  std::string stage;
  double seconds = 0.0;
  double peak_rss_mb = 0.0;        // the process's, so far
  int64_t peak_tensor_bytes = 0;   // CPU tensor storage at its highest during the stage
  int64_t device_peak_bytes = 0;   // CUDA allocations at their highest (0 on CPU)
  std::optional<MemoryPlan> plan;  // what the memory plan predicted for it
};

// The model's quality at one point of the pipeline.
struct Quality {
  double lm_loss = 0.0;  // on the fixed calibration probe batch
  double heldout_nll = 0.0;
};

// The inputs every stage reads, loaded once.
struct ConvertContext {
  ConvertContext(const ConvertOptions& o, const ConvertPlan& p, io::StagedDirectory& s)
      : options(o), plan(p), staged(s) {}
  const ConvertOptions& options;
  const ConvertPlan& plan;
  std::string model_path;
  Checkpoint source;                             // as stored (bf16 stays bf16), on the CPU
  std::unique_ptr<Tokenizer> tokenizer;          // the source's, written into the output
  std::vector<std::vector<int32_t>> heldout;     // BOS + tokens per document
  std::unique_ptr<TokenDataset> calibration;
  std::unique_ptr<SequenceSampler> sampler;
  torch::Tensor probe;                           // a fixed calibration batch [B, T + 1] on the device
  torch::Device device{torch::kCPU};
  std::unique_ptr<Distributed> dist;
  io::StagedDirectory& staged;
  std::vector<StageTiming> timings;

  Quality measure(Llama& model, const ForwardOptions& forward = {}) const;
  int64_t heldout_docs() const;  // documents measure() scores
  // The source as a frozen model over its own tensors (no copy), on the device.
  Llama source_model() const;
  // The memory plan of a stage that trains (nullopt for one that does not).
  std::optional<MemoryPlan> stage_plan(const std::string& stage, int64_t fusion_operators = 0) const;
};

// Loads the model, tokenizes calibration and held-out text, sets up the device.
std::unique_ptr<ConvertContext> open_context(const ConvertOptions& options, const ConvertPlan& plan,
                                             const std::string& model_path, const std::string& tokenizer_path,
                                             const RankEnvironment& ranks, io::StagedDirectory& staged);

// Runs `body` as the stage `name`, recording its time and peak memory (and,
// when given, the memory plan it is held to, which is printed first).
template <typename F>
auto timed(ConvertContext& ctx, const std::string& name, F&& body, std::optional<MemoryPlan> plan = std::nullopt)
    -> decltype(body());

// ---- the stages ---------------------------------------------------------------

AttentionSimilarity analyze_attention(ConvertContext& ctx);

struct SharingResult {
  Checkpoint model;               // the source's tensors as stored, the spans applied (the source when none)
  std::vector<LayerSpan> spans;
  std::optional<Quality> after;   // when head sharing follows
};
SharingResult share_layers(ConvertContext& ctx, const std::optional<AttentionSimilarity>& similarity);

struct SearchResult {
  Grouping grouping;
  std::vector<torch::Tensor> costs;  // the first round's, per pool (dha only)
  nlohmann::json figures = nlohmann::json::object();
};
SearchResult search_groups(ConvertContext& ctx, const Checkpoint& model);

struct FusionStageResult {
  Quality after;
  std::vector<FusionRecord> records;
  double initial_loss = 0.0, final_loss = 0.0, fused_threshold = 0.0;
  std::vector<std::vector<double>> group_losses;
  int64_t tokens = 0;  // trained on, all ranks together
};
struct MergeResult {
  Checkpoint collapsed;
  std::optional<FusionStageResult> fusion;  // dha with fusion
  std::string stage;                        // what merged the heads (for the report)
  int64_t alignment_tokens = 0;             // read (forward only) for the alignment statistics
};
// The method row's merge (src/convert/method.h).
MergeResult merge_heads(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping);
// `model` (the source's function, as stored) with each group's heads
// aligned to each other (align_groups) from the activations of the probe
// batch, one layer at a time; the tokens read are counted into `result`.
Checkpoint aligned_groups(const ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping,
                          MergeResult& result);

struct ExportResult {
  ModelConfig config;              // the written layout
  double max_abs_logit_diff = 0.0; // exported against collapsed, on the probe
};
ExportResult export_model(ConvertContext& ctx, const Checkpoint& collapsed, Llama& collapsed_model);

// ---- the report ------------------------------------------------------------------

struct ConvertResults {
  std::optional<AttentionSimilarity> similarity;
  std::optional<Quality> before;
  std::optional<SharingResult> sharing;
  std::optional<SearchResult> search;
  std::optional<MergeResult> merge;
  std::optional<Quality> after;
  std::optional<ExportResult> exported;
};
nlohmann::json conversion_report(const ConvertContext& ctx, const ConvertResults& results, double wall_seconds);
// The typed figures the tools print, beside the report.
ConvertSummary conversion_summary(const ConvertContext& ctx, const ConvertResults& results, nlohmann::json report,
                                  const std::string& out_dir, double wall_seconds);
void write_pictures(const ConvertContext& ctx, const ConvertResults& results);

// ---- implementation of timed() --------------------------------------------------

// Starts a stage: logs it (and its plan), resets the peak counters.
void begin_stage(const ConvertContext& ctx, const std::string& name, const std::optional<MemoryPlan>& plan);
StageTiming end_stage(const ConvertContext& ctx, const std::string& name, double seconds,
                      std::optional<MemoryPlan> plan);

template <typename F>
auto timed(ConvertContext& ctx, const std::string& name, F&& body, std::optional<MemoryPlan> plan)
    -> decltype(body()) {
  begin_stage(ctx, name, plan);
  const auto begin = std::chrono::steady_clock::now();
  auto record = [&] {
    ctx.timings.push_back(
        end_stage(ctx, name, std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count(), plan));
  };
  if constexpr (std::is_void_v<decltype(body())>) {
    body();
    record();
  } else {
    auto result = body();
    record();
    return result;
  }
}

}  // namespace dha::convert
