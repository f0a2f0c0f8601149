// Grouped attention with decoupled K/V head maps: the one attention op of the model.
// MHA (identity maps), GQA (contiguous equal groups) and DHA (any onto maps) all run here.
#pragma once

#include <torch/types.h>

namespace dha {

// q: [B, H, T_q, d_h]; k: [B, H_K, T_k, d_h]; v: [B, H_V, T_k, d_h] (post-RoPE keys).
// k_map, v_map: int64 [H] on q's device; query head i reads key head k_map[i]
// and value head v_map[i]. Queries are the last T_q positions of the T_k keys
// (T_q <= T_k), so causal masking allows key j for query t when
// j <= T_k - T_q + t. Returns [B, H, T_q, d_h] in q's dtype.
//
// This is the reference path (K/V expanded with index_select, then scaled
// dot-product attention); it serves CPU and any device without a fused kernel.
torch::Tensor grouped_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& k_map,
                                const torch::Tensor& v_map, bool causal);

}  // namespace dha
