// Reference grouped attention: expand K/V through the head maps, then SDPA.
#include "dha/attention.h"

#include <cmath>

#include <ATen/ATen.h>

#include "dha/error.h"

namespace dha {

torch::Tensor grouped_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& k_map,
                                const torch::Tensor& v_map, bool causal) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "grouped_attention: q, k, v must be [B, heads, T, d_h]");
  const int64_t n_heads = q.size(1), t_q = q.size(2), t_k = k.size(2);
  TORCH_CHECK(k_map.numel() == n_heads && v_map.numel() == n_heads,
              "grouped_attention: k_map and v_map need one entry per query head (", n_heads, ")");
  TORCH_CHECK(t_q <= t_k && v.size(2) == t_k, "grouped_attention: need T_q <= T_k == T_v");
  const torch::Tensor k_heads = k.index_select(1, k_map);
  const torch::Tensor v_heads = v.index_select(1, v_map);
  if (!causal || t_q == 1) {
    // A single query at the end of the sequence sees every key: no mask needed.
    return at::scaled_dot_product_attention(q, k_heads, v_heads);
  }
  if (t_q == t_k) return at::scaled_dot_product_attention(q, k_heads, v_heads, {}, 0.0, true);
  // Queries continue a cached prefix: SDPA's is_causal aligns top-left, so pass
  // the bottom-right aligned mask explicitly.
  const torch::Tensor mask =
      torch::ones({t_q, t_k}, q.options().dtype(torch::kBool)).tril(t_k - t_q);
  return at::scaled_dot_product_attention(q, k_heads, v_heads, mask);
}

}  // namespace dha
