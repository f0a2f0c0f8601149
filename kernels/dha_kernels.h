// Grouped attention kernels with decoupled K/V head maps: the host API of the
// dha_kernels library (pure CUDA C++: raw pointers, element strides, a stream).
//
// Shapes (element strides; the last dimension must be contiguous and every row
// 16-byte aligned):
//   q, out, dout, dq : [B, H,   T_q, D]     k, dk : [B, H_K, T_k, D]
//   v, dv            : [B, H_V, T_k, D]     lse   : [B, H, T_q] float32, contiguous
//   k_map, v_map     : int64 [H] in device memory; query head i reads key head
//                      k_map[i] and value head v_map[i]. An entry out of range
//                      makes that head's outputs NaN (nothing is read out of bounds).
// Queries are the last T_q of the T_k positions: with causal masking query t
// reads keys j <= T_k - T_q + t. lse is the natural-log sum of exp(q.k * scale)
// over the allowed keys, what the backward needs.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "attention_plan.h"

namespace dha::kernels {

struct Strided {
  const void* ptr = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
};

struct StridedOut {
  void* ptr = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
};

struct ForwardArgs {
  AttentionShape shape;
  DType dtype = DType::kBF16;
  Strided q, k, v;
  const int64_t* k_map = nullptr;
  const int64_t* v_map = nullptr;
  StridedOut out;
  float* lse = nullptr;  // [B, H, T_q]
};

// Prefill forward (FlashAttention-2 style; any T_q). Fills out and lse.
cudaError_t attention_forward(const ForwardArgs& args, cudaStream_t stream);

// Decode forward for few queries against a long KV cache (any T_q, meant for
// T_q <= kDecodeMaxQueries): split along the keys per `plan`, then combined.
// `workspace` holds plan.workspace_floats floats of device memory.
cudaError_t attention_decode(const ForwardArgs& args, const DecodePlan& plan, float* workspace,
                             cudaStream_t stream);

struct BackwardArgs {
  AttentionShape shape;
  DType dtype = DType::kBF16;
  Strided q, k, v, out, dout;
  const float* lse = nullptr;  // [B, H, T_q] from the forward
  const int64_t* k_map = nullptr;
  const int64_t* v_map = nullptr;
  StridedOut dq, dk, dv;
  // float32 scratch of backward_workspace_floats(shape) floats, carved into
  // D = rowsum(dO o O) [B, H, T_q] and the dq, dk, dv accumulators.
  float* workspace = nullptr;
};

// Backward: dq, and dk / dv summed over every query head that reads each head.
cudaError_t attention_backward(const BackwardArgs& args, cudaStream_t stream);

}  // namespace dha::kernels
