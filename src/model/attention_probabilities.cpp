// Materialised attention probabilities, for layers that share them (Shared Attention).
#include <cmath>
#include <limits>

#include "dha/attention.h"
#include "dha/error.h"

namespace dha {

torch::Tensor attention_probabilities(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& k_map, bool causal) {
  if (q.dim() != 4 || k.dim() != 4 || q.size(3) != k.size(3) || q.size(0) != k.size(0))
    fail("attention_probabilities: q [B, H, T_q, d_h] and k [B, H_K, T_k, d_h] do not match: ", q.sizes(), " vs ",
         k.sizes());
  const int64_t t_q = q.size(2), t_k = k.size(2);
  if (t_q > t_k) fail("attention_probabilities: ", t_q, " queries but only ", t_k, " keys");
  const auto compute = q.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor scores =
      torch::matmul(q.to(compute), k.index_select(1, k_map).to(compute).transpose(-2, -1)) * scale;
  if (causal && t_k > 1) {
    // Query t sits at position t_k - t_q + t: it reads keys up to there.
    const torch::Tensor allowed =
        torch::ones({t_q, t_k}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).tril(t_k - t_q);
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  }
  return torch::softmax(scores, -1);
}

torch::Tensor apply_attention_probabilities(const torch::Tensor& p, const torch::Tensor& v,
                                            const torch::Tensor& v_map) {
  if (p.dim() != 4 || v.dim() != 4 || p.size(3) != v.size(2) || p.size(1) != v_map.numel())
    fail("apply_attention_probabilities: P ", p.sizes(), " does not fit values ", v.sizes(), " with ", v_map.numel(),
         " query heads");
  return torch::matmul(p, v.index_select(1, v_map).to(p.scalar_type())).to(v.scalar_type());
}

}  // namespace dha
