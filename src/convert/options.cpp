// The conversion recipe: one table of fields (key, flag, help, member), and the
// training settings its trained stages derive from it.
#include <numeric>

#include "dha/convert.h"
#include "dha/dtype.h"
#include "dha/export.h"
#include "dha/search_measures.h"

namespace dha {
namespace {

RecipeFields<ConvertOptions> make_fields() {
  using O = ConvertOptions;
  return {
      {"budget", "--budget", "kept K+V heads over 2*L*H query heads, in (0, 1]", &O::budget},
      {"method", "--method", rows_help(convert_methods()), &O::method},
      {"share_spans", "--share-spans",
       "layers A-B,C-D reuse the attention of the layer before each span (shared-attention: default chosen for "
       "--budget; dha/gqa: applied first, the budget counts the removed keys)",
       &O::share_spans},
      {"analyze_attention", "--analyze-attention",
       "only measure cross-layer attention-map similarity: report.json and heatmaps, no model", &O::analyze_attention,
       true},
      {"calib", "--calib", "calibration text files (search, fusion, statistics)", &O::calib},
      {"eval_text", "--eval-text", "held-out text (default: the last --heldout of each calibration file)",
       &O::eval_text},
      {"heldout", "--heldout", "share of each calibration file held out for evaluation", &O::heldout},
      {"eval_docs", "--eval-docs", "held-out documents evaluated (0: all)", &O::eval_docs},
      {"seed", "--seed", "seed", &O::seed},
      {"device", "--device", "auto | cpu | cuda", &O::device},
      {"batch", "--batch", "sequences per step", &O::batch},
      {"seq_len", "--seq-len", "sequence length (0: the model's context)", &O::seq_len},
      {"measure", "--measure", "search cost: " + search_measures_help(), &O::measure},
      {"search_steps", "--search-steps", "fusion measure: steps of whole-pool fusion", &O::search_steps},
      {"search_average", "--search-average", "fusion measure: average costs over the last N steps (0: all)",
       &O::search_average},
      {"max_group_size", "--max-group-size", "cap on heads per group (0: none)", &O::max_group_size},
      {"adaptive", "--adaptive",
       "let the search's costs decide each layer's K and V head counts (the paper's adaptive allocation). By "
       "default every layer keeps the same counts, as even as the budget allows; which heads share is searched "
       "either way (--layout dha; per-layer-gqa always chooses each layer's group count)",
       &O::adaptive, true},
      {"rounds", "--rounds", "progressive search in N rounds", &O::rounds},
      {"layout", "--layout",
       "dha: K and V grouped separately, any sizes; per-layer-gqa: K and V of a layer on one partition of equal "
       "groups (group counts dividing H), kept without loss by dha-export --format gqa / gguf",
       &O::layout},
      {"fusion", "--no-fusion", "mean-pool the searched groups (ablation: w/o linear fusion)", &O::fusion, false},
      {"fusion_steps", "--fusion-steps", "steps of fusion training", &O::fusion_steps},
      {"lr", "--lr", "learning rate of the model weights during fusion", &O::lr},
      {"omega_lr", "--omega-lr", "learning rate of the fusion operators", &O::omega_lr},
      {"lambda_lr", "--lambda-lr", "ascent rate of the Lagrange multipliers", &O::lambda_lr},
      {"target_fraction", "--target-fraction", "share of fusion steps over which the target falls to 0",
       &O::target_fraction},
      {"per_channel", "--per-channel", "per-channel fusion operators (n x n x d_h)", &O::per_channel, true},
      {"align", "--no-align",
       "fuse the searched groups as they are (ablation; the paper's recipe). By default dha aligns each group's "
       "heads first, as aligned-gqa does (an orthogonal re-basis per value head folded into W_O, RoPE-plane "
       "rotations per key head folded into W_Q; the function is unchanged)",
       &O::align, false},
      {"distill_weight", "--distill-weight", "weight of KL(source || fusion model) next to the LM loss",
       &O::distill_weight},
      {"train_weights", "--train-weights",
       "what trains in search and fusion: " + rows_help(train_weights_choices()),
       &O::train_weights},
      {"activation_checkpointing", "--activation-checkpointing",
       "recompute each decoder layer in backward instead of keeping its activations", &O::activation_checkpointing,
       true},
      {"zero", "--zero",
       "ZeRO stage of the search and fusion stages: 0 replicated; 1 shards the fp32 master weights and AdamW "
       "state over the ranks; 2 also the gradients; 3 also the weights other than the K/V projections being fused "
       "(implies --activation-checkpointing)",
       &O::zero},
      {"checkpoint_every", "--checkpoint-every", "training checkpoints of the search and fusion stages every N steps (0: none)",
       &O::checkpoint_every},
      {"export_format", "--export", export_formats_help(/*directories_only=*/true), &O::export_format},
      {"dtype", "--dtype", "weights on disk: " + output_dtypes_help(), &O::dtype},
  };
}

}  // namespace

const RecipeFields<ConvertOptions>& convert_recipe_fields() {
  static const RecipeFields<ConvertOptions> fields = make_fields();
  return fields;
}

ConvertOptions convert_options_from_json(const nlohmann::json& j, const std::string& where) {
  // Keys of earlier versions, named so that an old recipe.json says how to update it.
  if (j.is_object() && j.contains("uniform"))
    fail(where, ": \"uniform\" is now \"adaptive\" with the opposite meaning (\"uniform\": false is \"adaptive\": true)");
  if (j.is_object() && j.contains("export"))
    fail(where, ": \"export\" is now \"export_format\" (the same values)");
  return read_recipe(j, convert_recipe_fields(), where);
}

nlohmann::json convert_options_to_json(const ConvertOptions& options) {
  return write_recipe(options, convert_recipe_fields());
}

TrainConfig conversion_train_config(const ConvertOptions& options, int64_t steps, int64_t seq_len) {
  TrainConfig c;
  c.steps = steps;
  c.micro_batch = options.batch;
  c.seq_len = seq_len;
  c.lr = options.lr;
  c.warmup = 0.0;
  c.min_lr_ratio = 1.0;  // constant rate: the target schedule is what moves
  c.grad_clip = 1.0;
  c.seed = options.seed;
  c.device = options.device;
  c.keep_checkpoints = 1;
  c.checkpoint_every = options.checkpoint_every;
  c.activation_checkpointing = options.activation_checkpointing;
  c.zero = options.zero;
  c.log_every = 1;
  c.eval_every = 0;
  return c;
}

FusionOptions conversion_fusion_options(const ConvertOptions& options) {
  FusionOptions f;
  f.per_channel = options.per_channel;
  f.omega_lr = options.omega_lr;
  f.lambda_lr = options.lambda_lr;
  f.target_fraction = options.target_fraction;
  f.distill_weight = options.distill_weight;
  return f;
}

}  // namespace dha
