// dha: the heads of each pool grouped by the head-dependence search, fused
// under an augmented Lagrangian (after aligning each group's heads, unless
// --no-align), then collapsed (docs/method.md §2). --no-fusion (or
// --fusion-steps 0) mean-pools the searched groups instead: the paper's
// "w/o linear fusion" ablation.
#include <filesystem>

#include "dha/align.h"
#include "../method.h"

namespace dha::convert {
namespace {

void plan_dha(const ConvertOptions& options, ConvertPlan& plan) {
  plan.fusion_stage = options.fusion && options.fusion_steps > 0;
  // Alignment rotates K heads in their RoPE planes and folds them into W_Q;
  // where layers share attention (new spans, or a source that already does)
  // some have no keys or queries of their own, so it is left out there.
  bool any_shared = false;
  for (int64_t l = 0; l < plan.shared.n_layers; ++l) any_shared = any_shared || plan.shared.layout.shares_attention(l);
  plan.align = options.align && plan.fusion_stage && !any_shared;
}

// `start`: the checkpoint fusion starts from (the source with its spans, or
// its aligned re-parameterisation), taken by value so that what the fusion
// model copies of it goes before training.
FusionStageResult fuse(ConvertContext& ctx, Checkpoint start, const Grouping& grouping, Checkpoint& collapsed) {
  const ConvertOptions& recipe = ctx.options;
  const TrainWeights weights = ctx.plan.train_weights;
  Llama fused = make_model_over(start, "fusion", [&](const std::string& name) { return weight_trains(weights, name); });
  fused->to(ctx.device);
  std::optional<DistillationTeacher> teacher;
  if (recipe.distill_weight > 0) teacher.emplace(ctx.source, start, fused, ctx.device);
  start = Checkpoint();  // the fusion model and the teacher hold what they read of it
  const FusionOptions fusion = conversion_fusion_options(recipe);
  FusionTask task(fused, grouping, recipe.fusion_steps, fusion,
                  teacher ? std::optional<Llama>(teacher->model()) : std::nullopt);
  TrainRun run;
  run.out_dir = ctx.staged.file("fusion");
  run.label = "fusion";
  run.final_checkpoint = false;  // only the periodic ones a recipe asks for
  std::filesystem::create_directories(run.out_dir);
  const TrainResult trained =
      train(task, *ctx.sampler, conversion_train_config(recipe, recipe.fusion_steps, ctx.plan.seq_len), *ctx.dist, run);
  task.before_eval();
  FusionStageResult result;
  result.tokens = trained.tokens;
  result.after = ctx.measure(task.model(), task.forward_options());
  result.records = task.records();
  result.initial_loss = task.initial_fusion_loss();
  result.final_loss = task.fusion_loss();
  result.fused_threshold = fusion.fused_threshold;
  result.group_losses = task.group_losses();
  collapsed = task.collapse();
  return result;
}

// Omega's entries: n^2 per group of n heads (times d_h per channel), for the stage's memory plan.
int64_t fusion_operator_elements(const ConvertContext& ctx, const Grouping& grouping) {
  int64_t operators = 0;
  for (const auto& pool : grouping)
    for (const auto& group : pool)
      if (group.size() > 1)
        operators += static_cast<int64_t>(group.size() * group.size()) *
                     (ctx.options.per_channel ? ctx.plan.source.head_dim : 1);
  return operators;
}

MergeResult fuse_and_collapse(ConvertContext& ctx, const Checkpoint& model, const Grouping& grouping) {
  if (!ctx.plan.fusion_stage) return mean_pooled(ctx, model, grouping);
  MergeResult result;
  result.stage = "fusion";
  result.fusion = timed(
      ctx, result.stage,
      [&] {
        // Heads alike up to a rotation start fusion alike: the same re-parameterisation as aligned-gqa's.
        return fuse(ctx, ctx.plan.align ? aligned_groups(ctx, model, grouping, result) : model, grouping,
                    result.collapsed);
      },
      ctx.stage_plan("fusion", fusion_operator_elements(ctx, grouping)));
  return result;
}

}  // namespace

ConvertMethodRow dha_method() {
  ConvertMethodRow row;
  row.name = "dha";
  row.help = "head-dependence search, fusion under an augmented Lagrangian, collapse";
  row.grouping = HeadGrouping::kSearched;
  row.takes_per_layer_gqa = true;
  row.plan = plan_dha;
  row.merge = fuse_and_collapse;
  return row;
}

}  // namespace dha::convert
