// The training recipe: what dha-train and the conversion's training stages
// run with (length, batch, schedule, AdamW, evaluation, checkpoints, data
// parallelism), read from and written to JSON through one table of fields.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "dha/recipe.h"

namespace dha {

struct TrainConfig {
  int64_t steps = 0;             // optimizer steps; 0: from `tokens`
  int64_t tokens = 0;            // token budget (used when steps == 0)
  int64_t micro_batch = 8;       // sequences per rank per micro-step
  int64_t grad_accum = 1;        // micro-steps per optimizer step
  int64_t seq_len = 0;           // 0: the model's context
  double lr = 1e-4;              // peak learning rate of the model weights
  double min_lr_ratio = 0.1;     // cosine floor, relative to the peak
  double warmup = 0.03;          // warmup: fraction of the steps (< 1) or a step count (>= 1)
  // Tokens trained before this run (a conversion's: report.json tokens.total): the
  // schedule spans them too, so conversion and training follow one cosine.
  int64_t prior_tokens = 0;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;        // <= 0: off
  int64_t eval_every = 0;        // steps between held-out evaluations (0: only at the end)
  int64_t eval_docs = 200;       // held-out documents per evaluation (0: all)
  int64_t checkpoint_every = 0;  // steps between checkpoints (0: only at the end / on a signal)
  int64_t keep_checkpoints = 3;
  int64_t log_every = 1;
  uint64_t seed = 1234;
  double distill_weight = 0.5;   // weight of KL(teacher || student) when a teacher is given
  double distill_temperature = 1.0;
  std::string device = "auto";   // auto | cpu | cuda
  int64_t bucket_mb = 25;        // gradient all-reduce bucket size
  int64_t dist_timeout_s = 300;  // a silent peer fails the run after this long
  int64_t stop_after = 0;        // stop (with a checkpoint) after this many steps of this run; 0: off
  bool activation_checkpointing = false;  // recompute each decoder layer in backward
  // ZeRO stage (0: every rank holds the whole training state): 1 shards the
  // fp32 master weights and AdamW moments, 2 also the gradients (reduced per
  // parameter as backward produces them), 3 also the weights (gathered per layer).
  int64_t zero = 0;
};

// The recipe keys of TrainConfig, with their flags and help.
const RecipeFields<TrainConfig>& train_recipe_fields();
// Reads a JSON recipe; an unknown key or a value of the wrong type is an error naming `where`.
TrainConfig train_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json train_config_to_json(const TrainConfig& config);

// Steps implied by a token budget: ceil(tokens / (world * micro_batch * accum * seq_len)).
int64_t steps_for_tokens(const TrainConfig& config, int world_size, int64_t seq_len);

}  // namespace dha
