// Language-model and distillation losses.
#include "dha/loss.h"

#include <torch/nn/functional/loss.h>

namespace dha {

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32),
                                              targets.reshape({-1}));
}

torch::Tensor distill_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                         double temperature) {
  const int64_t vocab = student_logits.size(-1);
  const torch::Tensor s = torch::log_softmax(student_logits.to(torch::kFloat32) / temperature, -1).reshape({-1, vocab});
  const torch::Tensor t = torch::log_softmax(teacher_logits.to(torch::kFloat32) / temperature, -1).reshape({-1, vocab});
  return (t.exp() * (t - s)).sum(-1).mean() * (temperature * temperature);
}

}  // namespace dha
