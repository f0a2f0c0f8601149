// Stage 2 and 3 of dha-convert: in-group linear fusion operators trained under
// an augmented Lagrangian, and the collapse to the DHA model (docs/method.md §2).
//
// Member j of group g gets the effective weight W~_j = sum_i Omega_g[j, i] W_i
// (scalar Omega, n x n; or per channel, n x n x d_h). Omega starts at the
// identity, so the fusion-stage model is the source model. The fusion loss of
// a group is the mean pairwise squared distance of the effective weights over
// the group's mean squared weight norm; L_F is the size-weighted mean. The
// objective is L_LM + lambda1 (L_F - t) + lambda2 (L_F - t)^2 with lambda
// ascended and the target t falling linearly from L_F(0) to 0.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "dha/search.h"
#include "dha/train.h"

namespace dha {

struct FusionOptions {
  bool per_channel = false;
  double omega_lr = 5e-3;
  double lambda_lr = 1.0;        // ascent rate of lambda1, lambda2
  double target_fraction = 0.25; // share of the steps over which t falls to 0
  double distill_weight = 0.0;   // KL(source || fusion model) next to the LM loss
  double fused_threshold = 1e-3; // a group counts as fused below this loss
};

// Replaces each pool's heads by the mean of its group: W*_g = mean_j W_j over
// `effective` weights (per pool [n, d_h, d], or [n, d_h, d + 1] with the bias
// column under attention biases; empty: the checkpoint's own).
Checkpoint collapse_groups(const Checkpoint& source, const Grouping& grouping,
                           const std::vector<torch::Tensor>& effective = {});

// A pool's heads in a checkpoint: [n, d_h, d], or [n, d_h, d + 1] with attention
// biases (projection_heads: the bias is part of the head for every measure,
// operator and collapse).
torch::Tensor pool_weights(const Checkpoint& checkpoint, const PoolId& pool);

// The distillation teacher of a fusion run: the source's function, on `device`,
// for the fusion model `fused` built over `start` (the source, its aligned
// re-parameterisation, or the source with shared spans applied). It reads
// `fused`'s frozen weights wherever they are what it needs, and uses the
// tensors of `start` or `source` (in their stored dtype; moved to `device`)
// for the rest: the weights that train, and the source's own where the start
// re-parameterised a weight that trains or changed the layout. It holds no
// tensor of `start` that `source` or the fusion model does not, so an aligned
// start's float32 copies go once the fusion model has its own. On a GPU that
// saves a model copy; with --train-weights none it costs only its logits.
Llama distillation_teacher(const Checkpoint& source, const Checkpoint& start, Llama fused, const torch::Device& device);

// That teacher, and on the CPU, when what it holds of its own are pages of the
// source's files (which the fusion model's copies handed back), the hand-back
// of each part's pages once the part has run (the LayerWeightSource the model
// calls): the teacher then holds one decoder layer (or the embedding, or the
// head) of its own weights at a time instead of a model's worth, and reads the
// rest again from the page cache or the file on its next forward.
class DistillationTeacher {
 public:
  DistillationTeacher(const Checkpoint& source, const Checkpoint& start, Llama fused, const torch::Device& device);
  ~DistillationTeacher();
  DistillationTeacher(DistillationTeacher&&) noexcept;
  DistillationTeacher& operator=(DistillationTeacher&&) noexcept;
  Llama model() const { return model_; }
  bool hands_back_pages() const { return pages_ != nullptr; }

 private:
  class PageHandBack;
  Llama model_;
  std::unique_ptr<PageHandBack> pages_;
};

struct FusionRecord {
  int64_t step = 0;
  double lm_loss = 0.0, fusion_loss = 0.0, target = 0.0, lambda1 = 0.0, lambda2 = 0.0;
};

class FusionTask : public TrainTask {
 public:
  // `model` has the source layout and is trained in place. Groups of one head
  // get no operator.
  FusionTask(Llama model, Grouping grouping, int64_t total_steps, const FusionOptions& options,
             std::optional<Llama> teacher);

  std::vector<ParamGroup> param_groups(const TrainConfig& config) override;
  torch::Tensor loss(const torch::Tensor& batch, StepScalars& scalars) override;
  void after_step(int64_t step, int64_t total_steps, std::map<std::string, double>& metrics) override;
  void before_eval() override;
  // The effective K/V weights of the last loss() or before_eval(), in place
  // of the model's own K/V projections.
  ForwardOptions forward_options() const override;
  // The K/V projections: fused from Omega before every forward.
  bool reads_outside_forward(const std::string& name) const override {
    return name.find(".k_proj.") != std::string::npos || name.find(".v_proj.") != std::string::npos;
  }
  Llama& model() override { return model_; }
  TensorMap state() override;
  void load_state(const TensorMap& tensors, const std::string& source) override;
  nlohmann::json extra_state() override;
  void load_extra_state(const nlohmann::json& j) override;

  // Current effective weights of every pool ([n, d_h, d], + 1 bias column).
  std::vector<torch::Tensor> effective_weights();
  // Per-group fusion losses, in pool/group order (groups of one head: 0).
  std::vector<std::vector<double>> group_losses();
  double fusion_loss();
  double initial_fusion_loss() const { return initial_loss_; }
  const std::vector<FusionRecord>& records() const { return records_; }
  // The collapsed DHA model's checkpoint (layout from the grouping).
  Checkpoint collapse();
  // Calls `observer` with the effective weights after each of the last `n`
  // steps (the search's fusion measure accumulates its costs from them).
  using EffectiveObserver = std::function<void(const std::vector<torch::Tensor>& effective)>;
  void observe_last_steps(int64_t n, EffectiveObserver observer) {
    observe_last_ = n;
    observer_ = std::move(observer);
  }
  // Operators for tests: omega(pool, group) (undefined for one-head groups).
  torch::Tensor& omega(size_t pool, size_t group) { return omegas_.at(pool).at(group); }

 private:
  torch::Tensor pool_weight(const PoolId& pool);        // current theta slice [n, d_h, d (+ 1)]
  torch::Tensor fused_pool(size_t p, const torch::Tensor& w);
  torch::Tensor fusion_loss_tensor(const std::vector<torch::Tensor>& fused, std::vector<std::vector<double>>* per_group);
  void use_fused_weights(const std::vector<torch::Tensor>& fused);  // into kv_weights_
  double target(int64_t step) const;

  Llama model_;
  Grouping grouping_;
  std::vector<PoolId> pools_;
  int64_t total_steps_;
  FusionOptions options_;
  std::optional<Llama> teacher_;
  std::vector<std::vector<torch::Tensor>> omegas_;
  std::vector<KVWeights> kv_weights_;  // per layer: the effective K/V weights the forward uses
  torch::Tensor lambda1_, lambda2_;
  double initial_loss_ = 0.0;
  int64_t step_ = 0;
  std::vector<FusionRecord> records_;
  int64_t observe_last_ = 0;
  EffectiveObserver observer_;
};

}  // namespace dha
