// The conversion stages: attention analysis, attention sharing, the head
// search, the merge of each group (the method row's) and export.
#include <filesystem>

#include "dha/align.h"
#include "dha/export.h"
#include "dha/search_measures.h"
#include "method.h"

namespace dha::convert {
namespace fs = std::filesystem;

namespace {

// Calibration batches for the attention-similarity analysis: a few fixed
// ones, at most kAnalysisSeqLen long, since the analysis holds L x [H, T, T]
// float64 probabilities of one sequence.
constexpr int64_t kAnalysisSeqLen = 256;
constexpr int64_t kAnalysisBatches = 4;

// Groups of round r+1 index the groups of round r: expressed over the source heads.
Grouping compose(const Grouping& first, const Grouping& second) {
  Grouping out(first.size());
  for (size_t p = 0; p < first.size(); ++p)
    for (const auto& group : second[p]) {
      std::vector<int64_t> members;
      for (int64_t g : group) members.insert(members.end(), first[p][g].begin(), first[p][g].end());
      std::sort(members.begin(), members.end());
      out[p].push_back(members);
    }
  for (auto& pool : out) std::sort(pool.begin(), pool.end());
  return out;
}

}  // namespace

AttentionSimilarity analyze_attention(ConvertContext& ctx) {
  std::vector<torch::Tensor> batches;
  const int64_t t = std::min(ctx.plan.seq_len, kAnalysisSeqLen);
  const int64_t b = ctx.options.batch;
  for (int64_t i = 0; i < kAnalysisBatches; ++i)
    batches.push_back(ctx.sampler->batch({}, i * b, b).narrow(1, 0, t).to(ctx.device));
  Llama source = ctx.source_model();
  return measure_attention_similarity(source, batches);
}

SharingResult share_layers(ConvertContext& ctx, const std::optional<AttentionSimilarity>& similarity) {
  SharingResult result;
  result.model = ctx.source;  // the same tensors
  result.spans = ctx.plan.spans;
  if (ctx.plan.choose_spans) result.spans = choose_share_spans(ctx.plan.source, similarity->cosine, ctx.options.budget);
  if (result.spans.empty()) return result;
  timed(ctx, "share attention", [&] {
    result.model = share_attention(result.model, result.spans);
    if (ctx.plan.shares_heads) {
      Llama shared = make_model_over(result.model, "shared attention");
      shared->to(ctx.device);
      result.after = ctx.measure(shared);
    }
  });
  return result;
}

SearchResult search_groups(ConvertContext& ctx, const Checkpoint& model) {
  const ConvertPlan& plan = ctx.plan;
  SearchResult result;
  if (!plan.shares_heads) return result;  // no head sharing: the spans are the conversion
  if (plan.method->grouping == HeadGrouping::kContiguous) {
    result.grouping = contiguous_grouping(plan.shared, plan.target_heads / pools_with_heads(plan.shared));
  } else {
    const int64_t have = plan.shared.layout.kv_heads();
    Checkpoint current = model;
    result.grouping = identity_grouping(plan.shared);
    for (int64_t round = 1; round <= ctx.options.rounds; ++round) {
      // Progressive: the head count falls linearly to the target over the rounds.
      GroupingOptions grouping;
      grouping.target_total = have - (have - plan.target_heads) * round / ctx.options.rounds;
      grouping.max_group_size = ctx.options.max_group_size;
      grouping.uniform = !ctx.options.adaptive && !plan.per_layer_gqa;  // per-layer-gqa chooses each layer's count
      const MeasureInputs inputs{ctx.options, current, *ctx.sampler, plan.seq_len, ctx.device, *ctx.dist,
                                 ctx.staged.file("search-round" + std::to_string(round)), result.figures};
      const auto costs = plan.measure->costs(inputs);
      if (round == 1) result.costs = costs;
      const Grouping step = plan.per_layer_gqa ? group_heads_per_layer_gqa(costs, grouping) : group_heads(costs, grouping);
      result.grouping = compose(result.grouping, step);
      current = collapse_groups(current, step);
    }
  }
  result.figures["groups"] = result.grouping;
  return result;
}

MergeResult merge_heads(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping) {
  return ctx.plan.method->merge(ctx, model, grouping);
}

Checkpoint aligned_groups(const ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping,
                          MergeResult& result) {
  Llama current = make_model_over(model, "align");  // the same tensors: no copy
  current->to(ctx.device);
  result.alignment_tokens = ctx.probe.size(0) * ctx.plan.seq_len;
  return align_groups(model, grouping, current, ctx.probe.narrow(1, 0, ctx.plan.seq_len));
}

ExportResult export_model(ConvertContext& ctx, const Checkpoint& collapsed, Llama& collapsed_model) {
  const ExportFormat& format = *ctx.plan.export_format;
  Checkpoint exported = export_checkpoint(collapsed, format);
  ExportResult result;
  result.config = exported.config;
  {
    torch::NoGradGuard no_grad;
    Llama reloaded = make_model_over(exported, "export");
    reloaded->to(ctx.device);
    const torch::Tensor tokens = ctx.probe.narrow(1, 0, std::min<int64_t>(ctx.plan.seq_len, 64));
    result.max_abs_logit_diff = (reloaded->forward(tokens) - collapsed_model->forward(tokens)).abs().max().item<double>();
  }
  ExportWriteOptions write;
  write.dtype = ctx.plan.output_dtype.value_or(ctx.source.storage_dtype);
  write.tokenizer = ctx.tokenizer.get();
  format.write(ctx.staged.path(), exported, write);
  return result;
}

}  // namespace dha::convert
