// Grouped attention with decoupled K/V head maps: the one attention op of the model.
// MHA (identity maps), GQA (contiguous equal groups) and DHA (any onto maps) all run here.
#pragma once

#include <tuple>

#include <torch/types.h>

namespace dha {

// q: [B, H, T_q, d_h]; k: [B, H_K, T_k, d_h]; v: [B, H_V, T_k, d_h] (post-RoPE keys).
// k_map, v_map: int64 [H] on q's device; query head i reads key head k_map[i]
// and value head v_map[i]. Queries are the last T_q positions of the T_k keys
// (T_q <= T_k), so causal masking allows key j for query t when
// j <= T_k - T_q + t. Returns [B, H, T_q, d_h] in q's dtype.
//
// Dispatches through the registered op `dha::grouped_attention` (src/attention_op.cpp):
// CPU and devices without a fused kernel run the reference (K/V expanded with
// index_select, then scaled dot-product attention); CUDA runs the kernels of
// kernels/ for bf16/fp16 and d_h 64 or 128 when they were built. Differentiable
// in q, k and v on every device.
torch::Tensor grouped_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& k_map,
                                const torch::Tensor& v_map, bool causal);

// The op's forward with the softmax statistics the backward needs:
// returns (out [B, H, T_q, d_h] in q's dtype, lse [B, H, T_q]) where
// lse[b, i, t] = log sum_j exp(q_t . k_j / sqrt(d_h)) over the allowed keys j,
// float64 for float64 inputs and float32 otherwise. Op `dha::grouped_attention_fwd`.
std::tuple<torch::Tensor, torch::Tensor> grouped_attention_forward(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal);

// Gradients (dq [B, H, T_q, d_h], dk [B, H_K, T_k, d_h], dv [B, H_V, T_k, d_h])
// from grad_out and the forward's out and lse; dk and dv sum over all query heads
// that read each key/value head. Op `dha::grouped_attention_bwd`.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> grouped_attention_backward(
    const torch::Tensor& grad_out, const torch::Tensor& q, const torch::Tensor& k,
    const torch::Tensor& v, const torch::Tensor& out, const torch::Tensor& lse,
    const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal);

// Shared Attention (docs/method.md §4.3) passes attention probabilities from one
// layer to the next, so they are materialised here, with plain differentiable
// ops on any device.
// q [B, H, T_q, d_h], k [B, H_K, T_k, d_h] (post-RoPE) -> P [B, H, T_q, T_k],
// float64 for float64 inputs and float32 otherwise; masked as grouped_attention.
torch::Tensor attention_probabilities(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& k_map, bool causal);
// P [B, H, T_q, T_k] and v [B, H_V, T_k, d_h] -> [B, H, T_q, d_h] in v's dtype.
torch::Tensor apply_attention_probabilities(const torch::Tensor& p, const torch::Tensor& v,
                                            const torch::Tensor& v_map);

namespace reference {

// The same three functions written with plain tensor ops on any device: the
// CPU implementation of the ops, the fallback of the CUDA ones (head dims or
// dtypes without a kernel), and the oracle of the kernel tests when run in
// float64. Half-precision inputs are computed in float32.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal);
std::tuple<torch::Tensor, torch::Tensor> attention_forward(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> attention_backward(
    const torch::Tensor& grad_out, const torch::Tensor& q, const torch::Tensor& k,
    const torch::Tensor& v, const torch::Tensor& out, const torch::Tensor& lse,
    const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal);

// Throws (TORCH_CHECK) unless q, k, v, k_map, v_map form a valid call; every
// implementation runs it first. Map values are checked where they can be read
// without a device synchronisation (maps on the CPU); the CUDA kernels turn an
// out-of-range entry into NaN outputs for its query head instead of reading
// outside K or V.
void check_arguments(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& k_map, const torch::Tensor& v_map);

}  // namespace reference
}  // namespace dha
