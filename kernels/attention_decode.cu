// Decode forward: few queries against a long KV cache, bound by reading the cache.
// A CTA takes up to kDecodeRows (query head, query) rows and one split of the keys.
// It groups its rows by key head and by value head (ballots in one warp), then
// streams each key tile of each *distinct* K head and V head once through shared
// memory, prefetching the next tile into registers while the current one is used:
//   K tile of head j -> scores of every row whose query head reads j,
//   online softmax over the tile (one warp per row),
//   V tile of head j -> output of every row whose query head reads j.
// With several splits, a combine kernel merges the partial (max, sum, output).
#include <cmath>

#include "common.cuh"

namespace dha::kernels {
namespace {

using detail::Half;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int R = kDecodeRows;
constexpr int L = kDecodeKeys;
static_assert(R == 64 && L == 64, "group building and the softmax assume 64 rows and 64 keys");

template <int D>
struct DecodeShared {
  static constexpr int W = D / 2 + 1;  // words per K/V tile row: odd, so column reads hit distinct banks
  float q[R][D];                      // queries, pre-scaled by scale * log2(e)
  float s[R][L];                      // scores, then probabilities, of the current key tile
  uint32_t kv[2][L][W];               // K or V tile (two buffers), packed pairs of halves
  float m[R], l[R], alpha[R];         // running max (log2 units), running sum, rescale of this tile
  int k_head[R], k_start[R + 1], k_rows[R];  // K groups: head, rows k_rows[k_start[g] .. k_start[g + 1])
  int v_head[R], row_v_group[R];             // V groups: head; each row's group (-1: none)
  int row_bad[R];                            // 1 where the head's map entry is out of range
  int n_k_groups, n_v_groups;
};

// Groups rows (lane and lane + 32 of warp 0) by head; groups appear in row order.
__device__ void build_groups(const int (&head)[2], const bool (&ok)[2], int* group_head,
                             int* group_start, int* group_rows, int* row_group, int* n_groups,
                             int lane) {
  constexpr unsigned kAll = 0xffffffffu;
  const unsigned below = (1u << lane) - 1u;
  unsigned pend0 = __ballot_sync(kAll, ok[0]), pend1 = __ballot_sync(kAll, ok[1]);
  int n = 0, pos = 0;
  while (pend0 | pend1) {
    const int first = pend0 ? __ffs(pend0) - 1 : 32 + __ffs(pend1) - 1;
    const int h0 = __shfl_sync(kAll, head[0], first & 31);
    const int h1 = __shfl_sync(kAll, head[1], first & 31);
    const int target = first < 32 ? h0 : h1;
    const bool in0 = ((pend0 >> lane) & 1u) && head[0] == target;
    const bool in1 = ((pend1 >> lane) & 1u) && head[1] == target;
    const unsigned m0 = __ballot_sync(kAll, in0), m1 = __ballot_sync(kAll, in1);
    if (in0) {
      if (group_rows) group_rows[pos + __popc(m0 & below)] = lane;
      if (row_group) row_group[lane] = n;
    }
    if (in1) {
      if (group_rows) group_rows[pos + __popc(m0) + __popc(m1 & below)] = lane + 32;
      if (row_group) row_group[lane + 32] = n;
    }
    if (lane == 0) {
      group_head[n] = target;
      if (group_start) group_start[n] = pos;
    }
    pos += __popc(m0) + __popc(m1);
    pend0 &= ~m0;
    pend1 &= ~m1;
    ++n;
  }
  if (lane == 0) {
    if (group_start) group_start[n] = pos;
    *n_groups = n;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 2)  // two CTAs per SM keep more loads in flight
    decode_kernel(const ForwardArgs a, const DecodePlan plan, float* part_o, float* part_ml) {
  using Shared = DecodeShared<D>;
  constexpr int W = Shared::W;
  constexpr int kChunks = L * D / 8 / kThreads;  // 16-byte chunks per thread and tile
  constexpr int kOwn = D / 64;                   // words of a row per lane in the PV phase
  constexpr int kRowsPerWarp = R / kWarps;
  static_assert(kChunks >= 1 && (L * D / 8) % kThreads == 0, "tile copy must divide evenly");

  extern __shared__ __align__(16) unsigned char smem[];
  Shared& S = *reinterpret_cast<Shared*>(smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int t_q = static_cast<int>(a.shape.t_q), t_k = static_cast<int>(a.shape.t_k);
  const int offset = t_k - t_q;
  const bool causal = a.shape.causal;
  const int split = blockIdx.x, b = blockIdx.z;
  const int h0 = blockIdx.y * static_cast<int>(plan.heads_per_block);
  const int n_heads = min(static_cast<int>(plan.heads_per_block), static_cast<int>(a.shape.heads) - h0);
  const int rows = n_heads * t_q;  // row r: query head h0 + r / t_q, query r % t_q
  const int s0 = split * static_cast<int>(plan.keys_per_split);
  const int s1 = min(t_k, s0 + static_cast<int>(plan.keys_per_split));
  const float scale_log2 = a.shape.scale * detail::kLog2e;

  if (warp == 0) {
    int kh[2], vh[2];
    bool ok[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = lane + 32 * i;
      ok[i] = false;
      kh[i] = vh[i] = -1;
      if (r < rows) {
        const int head = h0 + r / t_q;
        const int64_t kk = a.k_map[head], vv = a.v_map[head];
        ok[i] = detail::map_ok(kk, a.shape.k_heads) && detail::map_ok(vv, a.shape.v_heads);
        if (ok[i]) {
          kh[i] = static_cast<int>(kk);
          vh[i] = static_cast<int>(vv);
        }
      }
      S.row_bad[r] = (r < rows && !ok[i]) ? 1 : 0;
      S.row_v_group[r] = -1;
      S.m[r] = -INFINITY;
      S.l[r] = 0.0f;
    }
    build_groups(kh, ok, S.k_head, S.k_start, S.k_rows, nullptr, &S.n_k_groups, lane);
    build_groups(vh, ok, S.v_head, nullptr, nullptr, S.row_v_group, &S.n_v_groups, lane);
  }
  for (int i = tid; i < rows * (D / 2); i += kThreads) {
    const int r = i / (D / 2), c = 2 * (i % (D / 2));
    const T* src = static_cast<const T*>(a.q.ptr) + b * a.q.stride_b +
                   (h0 + r / t_q) * a.q.stride_h + (r % t_q) * a.q.stride_t + c;
    const float2 x = Half<T>::unpack(*reinterpret_cast<const uint32_t*>(src));
    S.q[r][c] = x.x * scale_log2;
    S.q[r][c + 1] = x.y * scale_log2;
  }
  __syncthreads();

  const int n_k = S.n_k_groups, n_v = S.n_v_groups;
  const int per_tile = n_k + n_v;
  const int n_tiles = s1 > s0 ? (s1 - s0 + L - 1) / L : 0;
  const int n_items = per_tile > 0 ? n_tiles * per_tile : 0;

  // Item i: tile i / per_tile; K group (i % per_tile) or V group (i % per_tile - n_k).
  uint4 pre[kChunks];
  auto load_item = [&](int item) {
    const int tile = item / per_tile, j = item % per_tile;
    const bool is_k = j < n_k;
    const int head = is_k ? S.k_head[j] : S.v_head[j - n_k];
    const Strided& src = is_k ? a.k : a.v;
    const T* base = static_cast<const T*>(src.ptr) + b * src.stride_b + head * src.stride_h;
    const int key0 = s0 + tile * L;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int chunk = tid + c * kThreads;
      const int row = chunk / (D / 8), col = (chunk % (D / 8)) * 8;
      const int key = key0 + row;
      pre[c] = key < s1 ? *reinterpret_cast<const uint4*>(base + key * src.stride_t + col)
                        : make_uint4(0u, 0u, 0u, 0u);
    }
  };
  auto store_item = [&](int buf) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int chunk = tid + c * kThreads;
      const int row = chunk / (D / 8), word = (chunk % (D / 8)) * 4;
      uint32_t* dst = &S.kv[buf][row][word];
      dst[0] = pre[c].x;
      dst[1] = pre[c].y;
      dst[2] = pre[c].z;
      dst[3] = pre[c].w;
    }
  };

  float acc[kRowsPerWarp][2 * kOwn];  // rows warp + 8 p; columns 2 (lane + 32 i) and + 1
#pragma unroll
  for (int p = 0; p < kRowsPerWarp; ++p)
#pragma unroll
    for (int c = 0; c < 2 * kOwn; ++c) acc[p][c] = 0.0f;

  if (n_items > 0) {
    load_item(0);
    store_item(0);
  }
  __syncthreads();

  for (int item = 0; item < n_items; ++item) {
    if (item + 1 < n_items) load_item(item + 1);  // in flight while this item computes
    const int tile = item / per_tile, j = item % per_tile;
    const int key0 = s0 + tile * L;
    const uint32_t(*kv)[W] = S.kv[item & 1];

    if (j < n_k) {
      // Scores of group j's rows: thread = (key, row group of 4).
      const int start = S.k_start[j], count = S.k_start[j + 1] - start;
      const int key = tid % L, rg = tid / L;
      if (rg < count) {
        const uint32_t* krow = kv[key];  // odd row stride: the warp's 32 keys hit 32 banks
        const int pos = key0 + key;
        for (int i = rg; i < count; i += kThreads / L) {
          const int r = S.k_rows[start + i];
          float dot = 0.0f;
#pragma unroll
          for (int w = 0; w < D / 2; w += 2) {
            const float4 qq = *reinterpret_cast<const float4*>(&S.q[r][2 * w]);
            const float2 k0 = Half<T>::unpack(krow[w]), k1 = Half<T>::unpack(krow[w + 1]);
            dot += qq.x * k0.x + qq.y * k0.y + qq.z * k1.x + qq.w * k1.y;
          }
          const bool ok = pos < s1 && (!causal || pos <= offset + r % t_q);
          S.s[r][key] = ok ? dot : -INFINITY;
        }
      }
      if (j == n_k - 1) {
        __syncthreads();  // all scores of the tile written
        for (int r = warp; r < rows; r += kWarps) {
          if (S.row_bad[r]) continue;
          const float x0 = S.s[r][lane], x1 = S.s[r][lane + 32];
          const float m_old = S.m[r];
          const float mx = fmaxf(m_old, detail::warp_max(fmaxf(x0, x1)));
          const float base = mx == -INFINITY ? 0.0f : mx;
          const float p0 = exp2f(x0 - base), p1 = exp2f(x1 - base);
          S.s[r][lane] = p0;
          S.s[r][lane + 32] = p1;
          const float sum = detail::warp_sum(p0 + p1);
          if (lane == 0) {
            const float alpha = exp2f(m_old - base);
            S.alpha[r] = alpha;
            S.m[r] = mx;
            S.l[r] = S.l[r] * alpha + sum;
          }
        }
        __syncthreads();  // probabilities and rescale factors visible
#pragma unroll
        for (int p = 0; p < kRowsPerWarp; ++p) {
          const int r = warp + kWarps * p;
          if (r < rows && !S.row_bad[r]) {
            const float alpha = S.alpha[r];
#pragma unroll
            for (int c = 0; c < 2 * kOwn; ++c) acc[p][c] *= alpha;
          }
        }
      }
    } else {
      // Outputs of the rows whose value head is group j - n_k.
      const int group = j - n_k;
      bool mine[kRowsPerWarp];
      bool any = false;
#pragma unroll
      for (int p = 0; p < kRowsPerWarp; ++p) {
        const int r = warp + kWarps * p;
        mine[p] = r < rows && S.row_v_group[r] == group;
        any = any || mine[p];
      }
      if (any) {
        for (int key = 0; key < L; key += 4) {
          float2 vv[4][kOwn];
#pragma unroll
          for (int kq = 0; kq < 4; ++kq)
#pragma unroll
            for (int i = 0; i < kOwn; ++i) vv[kq][i] = Half<T>::unpack(kv[key + kq][lane + 32 * i]);
#pragma unroll
          for (int p = 0; p < kRowsPerWarp; ++p) {
            if (!mine[p]) continue;
            const float4 pr = *reinterpret_cast<const float4*>(&S.s[warp + kWarps * p][key]);
#pragma unroll
            for (int i = 0; i < kOwn; ++i) {
              acc[p][2 * i] += pr.x * vv[0][i].x + pr.y * vv[1][i].x + pr.z * vv[2][i].x + pr.w * vv[3][i].x;
              acc[p][2 * i + 1] += pr.x * vv[0][i].y + pr.y * vv[1][i].y + pr.z * vv[2][i].y + pr.w * vv[3][i].y;
            }
          }
        }
      }
    }
    if (item + 1 < n_items) store_item((item + 1) & 1);
    __syncthreads();
  }

  // Partial results of this split: unnormalised output, running max and sum.
#pragma unroll
  for (int p = 0; p < kRowsPerWarp; ++p) {
    const int r = warp + kWarps * p;
    if (r >= rows) continue;
    const int64_t row = (static_cast<int64_t>(b) * a.shape.heads + h0 + r / t_q) * t_q + r % t_q;
    const int64_t idx = row * plan.splits + split;
    const bool bad = S.row_bad[r] != 0;
    float* dst = part_o + idx * D;
#pragma unroll
    for (int i = 0; i < kOwn; ++i) {
      dst[2 * (lane + 32 * i)] = bad ? NAN : acc[p][2 * i];
      dst[2 * (lane + 32 * i) + 1] = bad ? NAN : acc[p][2 * i + 1];
    }
    if (lane == 0) {
      part_ml[2 * idx] = bad ? NAN : S.m[r];
      part_ml[2 * idx + 1] = bad ? NAN : S.l[r];
    }
  }
}

// Merges the splits of each (b, h, t) row, one warp per row; writes out and lse.
template <typename T, int D>
__global__ void combine_kernel(const ForwardArgs a, int64_t splits, const float* part_o,
                               const float* part_ml) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int64_t t_q = a.shape.t_q, heads = a.shape.heads;
  if (row >= a.shape.batch * heads * t_q) return;
  const int64_t t = row % t_q, h = (row / t_q) % heads, b = row / (t_q * heads);
  const float* ml = part_ml + row * splits * 2;
  float mx = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  float sum = 0.0f;
  for (int64_t s = 0; s < splits; ++s) sum += ml[2 * s + 1] * exp2f(ml[2 * s] - base);
  const float inv = 1.0f / sum;
  T* out = static_cast<T*>(a.out.ptr) + b * a.out.stride_b + h * a.out.stride_h + t * a.out.stride_t;
#pragma unroll
  for (int c = 2 * lane; c < D; c += 64) {
    float o0 = 0.0f, o1 = 0.0f;
    for (int64_t s = 0; s < splits; ++s) {
      const float wgt = exp2f(ml[2 * s] - base) * inv;
      const float* src = part_o + (row * splits + s) * D + c;
      o0 += wgt * src[0];
      o1 += wgt * src[1];
    }
    *reinterpret_cast<uint32_t*>(out + c) = Half<T>::pack(o0, o1);
  }
  if (lane == 0) a.lse[row] = (mx + log2f(sum)) * detail::kLn2;
}

template <typename T, int D>
cudaError_t launch_decode(const ForwardArgs& a, const DecodePlan& plan, float* workspace,
                          cudaStream_t stream) {
  constexpr size_t smem = sizeof(DecodeShared<D>);
  auto kernel = decode_kernel<T, D>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const AttentionShape& s = a.shape;
  float* part_o = workspace;
  float* part_ml = workspace + s.batch * s.heads * s.t_q * plan.splits * D;
  const dim3 grid(unsigned(plan.splits), unsigned(plan.head_blocks), unsigned(s.batch));
  kernel<<<grid, kThreads, smem, stream>>>(a, plan, part_o, part_ml);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t rows = s.batch * s.heads * s.t_q;
  combine_kernel<T, D><<<unsigned((rows + 7) / 8), 256, 0, stream>>>(a, plan.splits, part_o, part_ml);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention_decode(const ForwardArgs& a, const DecodePlan& plan, float* workspace,
                             cudaStream_t stream) {
  const AttentionShape& s = a.shape;
  if (!head_dim_supported(s.head_dim)) return cudaErrorInvalidValue;
  if (s.batch == 0 || s.heads == 0 || s.t_q == 0) return cudaSuccess;
  // The plan must come from plan_decode for this shape: every split non-empty.
  if (workspace == nullptr || plan.heads_per_block * s.t_q > kDecodeRows ||
      plan.keys_per_split % kDecodeKeys != 0 || plan.splits * plan.keys_per_split < s.t_k ||
      (plan.splits - 1) * plan.keys_per_split >= s.t_k)
    return cudaErrorInvalidValue;
  const bool bf16 = a.dtype == DType::kBF16;
  if (s.head_dim == 64)
    return bf16 ? launch_decode<__nv_bfloat16, 64>(a, plan, workspace, stream)
                : launch_decode<__half, 64>(a, plan, workspace, stream);
  return bf16 ? launch_decode<__nv_bfloat16, 128>(a, plan, workspace, stream)
              : launch_decode<__half, 128>(a, plan, workspace, stream);
}

}  // namespace dha::kernels
