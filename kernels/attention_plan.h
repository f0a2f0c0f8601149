// Host-side launch planning of the attention kernels: plain C++ (no CUDA), so the
// choices it makes (which kernel, how to split the decode, how much scratch) are
// unit-tested on machines without a GPU.
#pragma once

#include <algorithm>
#include <cstdint>

namespace dha::kernels {

enum class DType { kBF16, kFP16 };

struct AttentionShape {
  int64_t batch = 0, heads = 0, k_heads = 0, v_heads = 0;
  int64_t t_q = 0, t_k = 0, head_dim = 0;
  bool causal = false;
  float scale = 0.0f;  // softmax scale, 1/sqrt(head_dim) in the model
};

// Tiles of the prefill forward and the backward (queries x keys per CTA).
inline constexpr int kBlockM = 64;
inline constexpr int kBlockN = 64;
// The decode kernel serves up to kDecodeRows (query head, query) rows per CTA
// and streams kDecodeKeys keys per tile; it is chosen for T_q <= kDecodeMaxQueries.
inline constexpr int kDecodeRows = 64;
inline constexpr int kDecodeKeys = 64;
inline constexpr int64_t kDecodeMaxQueries = 16;
// A decode split covers at least this many key tiles, so the combine stays cheap.
inline constexpr int64_t kDecodeMinTilesPerSplit = 2;

inline bool head_dim_supported(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

inline bool use_decode_kernel(const AttentionShape& s) { return s.t_q <= kDecodeMaxQueries; }

struct DecodePlan {
  int64_t heads_per_block = 1;  // query heads per CTA (x T_q rows <= kDecodeRows)
  int64_t head_blocks = 1;      // CTAs along the heads
  int64_t splits = 1;           // CTAs along the keys
  int64_t keys_per_split = kDecodeKeys;
  int64_t workspace_floats = 0;  // partial outputs + (max, sum) per split
};

// Splits the keys when batch x head blocks alone would leave SMs idle: aims at
// two CTAs per SM (what fits of the ~85 KB of shared memory per CTA on H100).
inline DecodePlan plan_decode(const AttentionShape& s, int64_t num_sms) {
  DecodePlan p;
  const int64_t t_q = std::max<int64_t>(s.t_q, 1);
  p.heads_per_block = std::clamp<int64_t>(kDecodeRows / t_q, 1, std::max<int64_t>(s.heads, 1));
  p.head_blocks = (s.heads + p.heads_per_block - 1) / p.heads_per_block;
  const int64_t tiles = std::max<int64_t>((s.t_k + kDecodeKeys - 1) / kDecodeKeys, 1);
  const int64_t base = std::max<int64_t>(s.batch * p.head_blocks, 1);
  const int64_t target = 2 * std::max<int64_t>(num_sms, 1);
  const int64_t max_splits = std::max<int64_t>(tiles / kDecodeMinTilesPerSplit, 1);
  const int64_t wanted = std::clamp<int64_t>((target + base - 1) / base, 1, max_splits);
  const int64_t tiles_per_split = (tiles + wanted - 1) / wanted;
  p.splits = (tiles + tiles_per_split - 1) / tiles_per_split;
  p.keys_per_split = tiles_per_split * kDecodeKeys;
  p.workspace_floats = s.batch * s.heads * s.t_q * p.splits * (s.head_dim + 2);
  return p;
}

// float32 scratch of the backward: D = rowsum(dO o O), then dq, dk, dv accumulators.
inline int64_t backward_workspace_floats(const AttentionShape& s) {
  return s.batch * s.heads * s.t_q * (1 + s.head_dim) +
         s.batch * (s.k_heads + s.v_heads) * s.t_k * s.head_dim;
}

}  // namespace dha::kernels
