// The losses the conversion and training share.
#pragma once

#include <torch/types.h>

namespace dha {

// Mean next-token cross-entropy of logits [B, T, V] against targets [B, T], in float32.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);
// Mean per-token KL(teacher || student) at a temperature (times T^2, so that
// gradients compare across temperatures).
torch::Tensor distill_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                         double temperature);

}  // namespace dha
