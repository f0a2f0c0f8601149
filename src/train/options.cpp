// The training recipe: one table of fields (key, flag, help, member), and
// the length a recipe implies.
#include "dha/train_config.h"

#include "dha/error.h"

namespace dha {
namespace {

RecipeFields<TrainConfig> make_fields() {
  using C = TrainConfig;
  return {
      {"steps", "--steps", "optimizer steps (0: from --tokens)", &C::steps},
      {"tokens", "--tokens", "token budget", &C::tokens},
      {"micro_batch", "--batch", "sequences per rank per micro-step", &C::micro_batch},
      {"grad_accum", "--grad-accum", "micro-steps per optimizer step", &C::grad_accum},
      {"seq_len", "--seq-len", "sequence length (0: the model's context)", &C::seq_len},
      {"lr", "--lr", "peak learning rate", &C::lr},
      {"min_lr_ratio", "--min-lr-ratio", "cosine floor relative to the peak", &C::min_lr_ratio},
      {"warmup", "--warmup", "warmup: fraction of the steps (< 1) or steps (>= 1)", &C::warmup},
      {"prior_tokens", "--prior-tokens",
       "tokens trained before this run (a conversion's: report.json tokens.total); the cosine spans them too and "
       "this run starts where they left it (the warmup still ramps this run's first steps)",
       &C::prior_tokens},
      {"weight_decay", "--weight-decay", "AdamW weight decay", &C::weight_decay},
      {"beta1", "", "AdamW beta1", &C::beta1},
      {"beta2", "", "AdamW beta2", &C::beta2},
      {"eps", "", "AdamW epsilon", &C::eps},
      {"grad_clip", "--clip", "gradient-norm clipping (<= 0: off)", &C::grad_clip},
      {"eval_every", "--eval-every", "steps between held-out evaluations (0: start and end)", &C::eval_every},
      {"eval_docs", "--eval-docs", "held-out documents per evaluation (0: all)", &C::eval_docs},
      {"checkpoint_every", "--checkpoint-every", "steps between checkpoints (0: end and signals)",
       &C::checkpoint_every},
      {"keep_checkpoints", "--keep", "checkpoints kept", &C::keep_checkpoints},
      {"log_every", "", "steps between metrics lines", &C::log_every},
      {"seed", "--seed", "seed (data order, initialisation)", &C::seed},
      {"distill_weight", "--distill-weight", "weight of the KL term with --teacher", &C::distill_weight},
      {"distill_temperature", "", "temperature of the KL term", &C::distill_temperature},
      {"device", "--device", "auto | cpu | cuda", &C::device},
      {"bucket_mb", "", "gradient all-reduce bucket size in MiB", &C::bucket_mb},
      {"zero", "--zero",
       "ZeRO stage: 0 replicated; 1 shards weights' fp32 master and AdamW state; 2 also gradients; 3 also the "
       "weights, gathered per layer (implies --activation-checkpointing)",
       &C::zero},
      {"dist_timeout_s", "--dist-timeout", "seconds before a silent peer fails the run", &C::dist_timeout_s},
      {"stop_after", "--stop-after", "stop with a checkpoint after N steps of this run (0: off)", &C::stop_after},
      {"activation_checkpointing", "--activation-checkpointing",
       "recompute each decoder layer in backward instead of keeping its activations", &C::activation_checkpointing,
       true},
  };
}

}  // namespace

const RecipeFields<TrainConfig>& train_recipe_fields() {
  static const RecipeFields<TrainConfig> fields = make_fields();
  return fields;
}

TrainConfig train_config_from_json(const nlohmann::json& j, const std::string& where) {
  const TrainConfig c = read_recipe(j, train_recipe_fields(), where);
  if (c.micro_batch <= 0 || c.grad_accum <= 0) fail(where, ": micro_batch and grad_accum must be positive");
  if (c.steps < 0 || c.tokens < 0 || c.prior_tokens < 0)
    fail(where, ": steps, tokens and prior_tokens must not be negative");
  if (!(c.lr >= 0)) fail(where, ": lr must not be negative");
  if (c.zero < 0 || c.zero > 3) fail(where, ": zero must be 0, 1, 2 or 3 (got ", c.zero, ")");
  return c;
}

nlohmann::json train_config_to_json(const TrainConfig& config) { return write_recipe(config, train_recipe_fields()); }

int64_t steps_for_tokens(const TrainConfig& c, int world_size, int64_t seq_len) {
  if (c.steps > 0) return c.steps;
  const int64_t per_step = world_size * c.micro_batch * c.grad_accum * seq_len;
  if (c.tokens <= 0) fail("give a length: steps or tokens");
  return (c.tokens + per_step - 1) / per_step;
}

}  // namespace dha
