// The training loop shared by dha-train (continued pre-training, distillation,
// pre-training from scratch) and the fusion stage of dha-convert: AdamW with
// warmup + cosine, clipping, gradient accumulation, data parallelism,
// periodic held-out evaluation, metrics.jsonl, checkpoints with exact resume,
// SIGINT/SIGTERM handling and a NaN/Inf guard.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/data.h"
#include "dha/distributed.h"
#include "dha/memory_plan.h"
#include "dha/model.h"
#include "dha/optim.h"
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
  // layer as backward produces them), 3 also the weights (gathered per layer).
  int64_t zero = 0;
};

// The recipe keys of TrainConfig, with their flags and help.
const RecipeFields<TrainConfig>& train_recipe_fields();
// Reads a JSON recipe; an unknown key or a value of the wrong type is an error naming `where`.
TrainConfig train_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json train_config_to_json(const TrainConfig& config);

// Named scalars a micro-step records, as 0-dim tensors left on the device: the
// loop sums them and reads them back once per optimizer step, so that a CUDA
// step never waits on the host between its forward and backward passes.
using StepScalars = std::map<std::string, torch::Tensor>;

// What is trained and how a micro-batch's loss is computed.
class TrainTask {
 public:
  virtual ~TrainTask() = default;
  virtual std::vector<ParamGroup> param_groups(const TrainConfig& config) = 0;
  // batch: int64 [B, T + 1] on the training device. Returns the scalar loss to
  // minimise and may record named scalars (averaged over micro-steps and ranks).
  virtual torch::Tensor loss(const torch::Tensor& batch, StepScalars& scalars) = 0;
  // Called after every optimizer step (e.g. to move a target schedule).
  virtual void after_step(int64_t step, int64_t total_steps, std::map<std::string, double>& metrics) {}
  // The model evaluated on held-out documents.
  virtual Llama& model() = 0;
  // Called before held-out evaluation (e.g. to refresh weights the model reads).
  virtual void before_eval() {}
  // What the model's forward is given beside the tokens, in the loss and in
  // held-out evaluation (e.g. the fusion stage's effective K/V weights).
  virtual ForwardOptions forward_options() const { return {}; }
  // Whether the task reads parameter `name` outside the model's forward
  // (ZeRO-3 then keeps it whole instead of gathering it per layer).
  virtual bool reads_outside_forward(const std::string& name) const { return false; }
  // Everything the checkpoint must hold beyond the optimizer state.
  virtual TensorMap state();
  virtual void load_state(const TensorMap& tensors, const std::string& source);
  virtual nlohmann::json extra_state() { return nlohmann::json::object(); }
  virtual void load_extra_state(const nlohmann::json& j) {}
};

// Plain LM loss on the model, plus KL(teacher || student) when a teacher is set.
class LanguageModelTask : public TrainTask {
 public:
  LanguageModelTask(Llama model, std::optional<Llama> teacher, double distill_weight, double temperature);
  std::vector<ParamGroup> param_groups(const TrainConfig& config) override;
  torch::Tensor loss(const torch::Tensor& batch, StepScalars& scalars) override;
  Llama& model() override { return model_; }

 private:
  Llama model_;
  std::optional<Llama> teacher_;
  double distill_weight_, temperature_;
};

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

// Steps implied by a token budget: ceil(tokens / (world * micro_batch * accum * seq_len)).
int64_t steps_for_tokens(const TrainConfig& config, int world_size, int64_t seq_len);

}  // namespace dha
