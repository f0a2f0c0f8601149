// The conversion stages: attention analysis, attention sharing, the head
// search, the merge of each group (fusion, alignment or pooling) and export.
#include <filesystem>

#include "dha/align.h"
#include "dha/export.h"
#include "dha/search_measures.h"
#include "stages.h"

namespace dha::convert {
namespace fs = std::filesystem;

namespace {

// Calibration batches for the attention-similarity analysis: a few fixed
// ones, at most kAnalysisSeqLen long, since the analysis holds L x [H, T, T]
// float64 probabilities of one sequence.
constexpr int64_t kAnalysisSeqLen = 256;
constexpr int64_t kAnalysisBatches = 4;

// The activations alignment reads on the probe batch, counted into the tokens the conversion read.
std::vector<LayerActivations> alignment_activations(const ConvertContext& ctx, Llama& model, MergeResult& result) {
  result.alignment_tokens = ctx.probe.size(0) * ctx.plan.seq_len;
  return collect_activations(model, ctx.probe.narrow(1, 0, ctx.plan.seq_len));
}

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

FusionStageResult fuse(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping, Checkpoint& collapsed) {
  const ConvertOptions& recipe = ctx.options;
  const TrainWeights weights = ctx.plan.train_weights;
  Llama fused = make_model_sharing(model, "fusion", [&](const std::string& name) { return weight_trains(weights, name); });
  fused->to(ctx.device);
  std::optional<Llama> teacher;
  if (recipe.distill_weight > 0)
    // Without shared spans `model` computes the source's function (it is the source or
    // its aligned re-parameterisation), so the teacher can share the fusion model's
    // frozen weights; a model with shared spans does not, and the teacher is the source.
    teacher = ctx.plan.spans.empty() ? teacher_sharing_frozen(model, fused, ctx.device) : ctx.source_model();
  const FusionOptions fusion = conversion_fusion_options(recipe);
  FusionTask task(fused, grouping, recipe.fusion_steps, fusion, teacher);
  TrainRun run;
  run.out_dir = ctx.staged.file("fusion");
  run.label = "fusion";
  run.final_checkpoint = false;  // only the periodic ones a recipe asks for
  fs::create_directories(run.out_dir);
  const TrainResult trained =
      train(task, *ctx.sampler, conversion_train_config(recipe, recipe.fusion_steps, ctx.plan.seq_len), *ctx.dist, run);
  task.before_eval();
  FusionStageResult result;
  result.tokens = trained.tokens;
  result.after = ctx.measure(task.model());
  result.records = task.records();
  result.initial_loss = task.initial_fusion_loss();
  result.final_loss = task.fusion_loss();
  result.fused_threshold = fusion.fused_threshold;
  result.group_losses = task.group_losses();
  collapsed = task.collapse();
  return result;
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
      Llama shared = make_model_sharing(result.model, "shared attention");
      shared->to(ctx.device);
      result.after = ctx.measure(shared);
    }
  });
  return result;
}

SearchResult search_groups(ConvertContext& ctx, const Checkpoint& model) {
  const ConvertPlan& plan = ctx.plan;
  SearchResult result;
  if (!plan.shares_heads) return result;  // shared-attention alone: the spans are the conversion
  if (plan.method != ConvertMethod::kDha) {
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
      grouping.uniform = ctx.options.uniform && !plan.per_layer_gqa;  // per-layer-gqa chooses each layer's count
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
  MergeResult result;
  switch (ctx.plan.method) {
    case ConvertMethod::kSharedAttention:
      result.collapsed = model;
      break;
    case ConvertMethod::kAlignedGqa:
      result.stage = "align and merge";
      timed(ctx, result.stage, [&] {
        Llama source = ctx.source_model();
        const auto acts = alignment_activations(ctx, source, result);
        result.collapsed = collapse_groups(align_groups(model, grouping, acts), grouping);
      });
      break;
    case ConvertMethod::kDha:
      if (ctx.plan.fusion_stage) {
        result.stage = "fusion";
        int64_t operators = 0;  // Omega entries: n^2 per group of n (times d_h per channel)
        for (const auto& pool : grouping)
          for (const auto& group : pool)
            if (group.size() > 1)
              operators += static_cast<int64_t>(group.size() * group.size()) *
                           (ctx.options.per_channel ? ctx.plan.source.head_dim : 1);
        result.fusion = timed(
            ctx, result.stage,
            [&] {
              if (!ctx.plan.align) return fuse(ctx, model, grouping, result.collapsed);
              // Heads alike up to a rotation start fusion alike: the same re-parameterisation as aligned-gqa's.
              Llama current = make_model_sharing(model, "align");
              current->to(ctx.device);
              const auto acts = alignment_activations(ctx, current, result);
              return fuse(ctx, align_groups(model, grouping, acts), grouping, result.collapsed);
            },
            ctx.stage_plan("fusion", operators));
        break;
      }
      [[fallthrough]];  // --no-fusion: the searched groups are mean-pooled
    case ConvertMethod::kGqa:
      result.stage = "mean pooling";
      timed(ctx, result.stage, [&] { result.collapsed = collapse_groups(model, grouping); });
      break;
  }
  return result;
}

ExportResult export_model(ConvertContext& ctx, const Checkpoint& collapsed, Llama& collapsed_model) {
  const ExportFormat& format = *ctx.plan.export_format;
  Checkpoint exported = export_checkpoint(collapsed, format);
  ExportResult result;
  result.config = exported.config;
  {
    torch::NoGradGuard no_grad;
    Llama reloaded = make_model_sharing(exported, "export");
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
