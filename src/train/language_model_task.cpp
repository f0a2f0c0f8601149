// The TrainTask defaults and dha-train's task: the LM loss, plus
// KL(teacher || student) when distilling.
#include "dha/train_task.h"

#include "dha/loss.h"

namespace dha {

TensorMap TrainTask::state() { return model()->state(); }

void TrainTask::load_state(const TensorMap& tensors, const std::string& source) {
  model()->load_state(tensors, source);
}

LanguageModelTask::LanguageModelTask(Llama model, std::optional<Llama> teacher, double distill_weight,
                                     double temperature)
    : model_(std::move(model)), teacher_(std::move(teacher)), distill_weight_(distill_weight), temperature_(temperature) {
  if (teacher_) {
    (*teacher_)->eval();
    for (auto& p : (*teacher_)->parameters()) p.set_requires_grad(false);
  }
}

std::vector<ParamGroup> LanguageModelTask::param_groups(const TrainConfig& config) {
  ParamGroup group;
  group.name = "model";
  group.lr = config.lr;
  group.weight_decay = config.weight_decay;
  for (const auto& item : model_->named_parameters()) group.params.emplace_back(item.key(), item.value());
  return {group};
}

torch::Tensor LanguageModelTask::loss(const torch::Tensor& batch, StepScalars& scalars) {
  const int64_t t = batch.size(1) - 1;
  const torch::Tensor inputs = batch.narrow(1, 0, t), targets = batch.narrow(1, 1, t);
  const torch::Tensor logits = model_->forward(inputs);
  const torch::Tensor lm = lm_loss(logits, targets);
  scalars["lm_loss"] = lm.detach();
  if (!teacher_) return lm;
  torch::Tensor teacher_logits;
  {
    torch::NoGradGuard no_grad;
    teacher_logits = (*teacher_)->forward(inputs);
  }
  const torch::Tensor kl = distill_kl(logits, teacher_logits, temperature_);
  scalars["kl"] = kl.detach();
  return lm + distill_weight_ * kl;
}

}  // namespace dha
