// What the training loop trains: a TrainTask names the parameters (in groups
// with their own rates), computes a micro-batch's loss and holds whatever a
// checkpoint must restore beside the optimizer. LanguageModelTask is dha-train's
// (LM loss, plus distillation from a teacher); the fusion stage has its own
// (dha/fusion.h).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/model.h"
#include "dha/optim.h"
#include "dha/train_config.h"

namespace dha {

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

}  // namespace dha
