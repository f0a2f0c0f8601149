// Prefill forward, FlashAttention-2 style: one CTA per (64-query tile, query head,
// batch) streams 64-key tiles of the key head k_map[h] and the value head v_map[h]
// through shared memory, keeps the online softmax in fp32 registers, and writes
// O and the log-sum-exp the backward reads.
#include <cmath>

#include "common.cuh"

namespace dha::kernels {
namespace {

using detail::Half;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

template <int D>
__host__ __device__ constexpr int smem_row() {
  return D + 8;  // 16 bytes of padding: ldmatrix rows land in distinct banks
}

template <typename T, int D>
constexpr size_t forward_smem_bytes() {
  return size_t(kBlockM + 2 * kBlockN) * smem_row<D>() * sizeof(T);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ForwardArgs a) {
  constexpr int BM = kBlockM, BN = kBlockN, LD = smem_row<D>();
  constexpr int KT = D / 16;  // k-steps of QK^T
  constexpr int NO = D / 8;   // 8-column tiles of O
  static_assert(BM == kWarps * 16 && BN == 64, "one 16-row slice per warp, 8 key tiles");

  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + BM * LD;
  T* sV = sK + BN * LD;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, c4 = lane % 4;
  const int t_q = static_cast<int>(a.shape.t_q), t_k = static_cast<int>(a.shape.t_k);
  const int offset = t_k - t_q;  // query t sits at position offset + t
  const bool causal = a.shape.causal;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;  // heaviest causal tiles first
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t kh = a.k_map[h], vh = a.v_map[h];

  T* out = static_cast<T*>(a.out.ptr) + b * a.out.stride_b + h * a.out.stride_h;
  float* lse = a.lse + (static_cast<int64_t>(b) * a.shape.heads + h) * t_q;
  if (!detail::map_ok(kh, a.shape.k_heads) || !detail::map_ok(vh, a.shape.v_heads)) {
    for (int i = tid; i < BM * D; i += kThreads) {
      const int row = m0 + i / D;
      if (row < t_q) out[row * a.out.stride_t + i % D] = T(NAN);
      if (row < t_q && i % D == 0) lse[row] = NAN;
    }
    return;
  }
  const T* qg = static_cast<const T*>(a.q.ptr) + b * a.q.stride_b + h * a.q.stride_h;
  const T* kg = static_cast<const T*>(a.k.ptr) + b * a.k.stride_b + kh * a.k.stride_h;
  const T* vg = static_cast<const T*>(a.v.ptr) + b * a.v.stride_b + vh * a.v.stride_h;

  // Causal: the last row of this tile reads keys < m0 + BM + offset.
  const int n_end = causal ? min(t_k, m0 + BM + offset) : t_k;
  const int n_tiles = (n_end + BN - 1) / BN;

  detail::load_tile_async<T, D, LD, BM, kThreads>(sQ, qg, a.q.stride_t, m0, t_q, tid);
  detail::load_tile_async<T, D, LD, BN, kThreads>(sK, kg, a.k.stride_t, 0, t_k, tid);
  detail::cp_async_commit();
  detail::cp_async_wait_all();
  __syncthreads();

  uint32_t qf[KT][4];
#pragma unroll
  for (int kk = 0; kk < KT; ++kk)
    detail::ldmatrix_x4(qf[kk], sQ + (warp * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);

  const float scale_log2 = a.shape.scale * detail::kLog2e;
  float o[NO][4];
#pragma unroll
  for (int j = 0; j < NO; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int row_pos[2] = {m0 + warp * 16 + g + offset, m0 + warp * 16 + g + 8 + offset};

  for (int it = 0; it < n_tiles; ++it) {
    const int n0 = it * BN;
    // V of this tile loads while S = Q K^T is computed.
    detail::load_tile_async<T, D, LD, BN, kThreads>(sV, vg, a.v.stride_t, n0, t_k, tid);
    detail::cp_async_commit();

    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t kf[4];
        detail::ldmatrix_x4(kf, sK + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                                    ((lane / 8) % 2) * 8);
        Half<T>::mma(s[2 * np], qf[kk], kf[0], kf[1]);
        Half<T>::mma(s[2 * np + 1], qf[kk], kf[2], kf[3]);
      }
    }

    // Scores in log2 units; masked entries -inf.
    const bool need_mask = n0 + BN > t_k || (causal && n0 + BN - 1 > m0 + offset);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * scale_log2;
        if (need_mask) {
          const int key = n0 + j * 8 + 2 * c4 + (e & 1);
          if (key >= t_k || (causal && key > row_pos[e / 2])) x = -INFINITY;
        }
        s[j][e] = x;
      }
    }

    // Online softmax: each row lives in the four lanes of a quad.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = detail::quad_max(mx);
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2f(row_max[r] - base);
      row_max[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - base);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha + sum;  // this lane's share; summed over the quad at the end
#pragma unroll
      for (int j = 0; j < NO; ++j) {
        o[j][2 * r] *= alpha;
        o[j][2 * r + 1] *= alpha;
      }
    }

    detail::cp_async_wait_all();
    __syncthreads();  // V visible; every warp is done with sK
    if (it + 1 < n_tiles) {
      detail::load_tile_async<T, D, LD, BN, kThreads>(sK, kg, a.k.stride_t, n0 + BN, t_k, tid);
      detail::cp_async_commit();
    }

    // O += P V, P straight from the score registers.
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
      const uint32_t pf[4] = {Half<T>::pack(s[2 * kc][0], s[2 * kc][1]),
                              Half<T>::pack(s[2 * kc][2], s[2 * kc][3]),
                              Half<T>::pack(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                              Half<T>::pack(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
      for (int dp = 0; dp < NO / 2; ++dp) {
        uint32_t vf[4];
        detail::ldmatrix_x4_trans(vf, sV + (kc * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD +
                                          dp * 16 + (lane / 16) * 8);
        Half<T>::mma(o[2 * dp], pf, vf[0], vf[1]);
        Half<T>::mma(o[2 * dp + 1], pf, vf[2], vf[3]);
      }
    }
    detail::cp_async_wait_all();
    __syncthreads();  // next K visible; every warp is done with sV
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = detail::quad_sum(row_sum[r]);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int row = m0 + warp * 16 + g + r * 8;
    if (row >= t_q) continue;
    T* orow = out + row * a.out.stride_t;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      *reinterpret_cast<uint32_t*>(orow + j * 8 + 2 * c4) =
          Half<T>::pack(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
    if (c4 == 0) lse[row] = sum > 0.0f ? (row_max[r] + log2f(sum)) * detail::kLn2 : -INFINITY;
  }
}

template <typename T, int D>
cudaError_t launch_forward(const ForwardArgs& a, cudaStream_t stream) {
  constexpr size_t smem = forward_smem_bytes<T, D>();
  auto kernel = forward_kernel<T, D>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned((a.shape.t_q + kBlockM - 1) / kBlockM), unsigned(a.shape.heads),
                  unsigned(a.shape.batch));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention_forward(const ForwardArgs& a, cudaStream_t stream) {
  if (!head_dim_supported(a.shape.head_dim)) return cudaErrorInvalidValue;
  if (a.shape.batch == 0 || a.shape.heads == 0 || a.shape.t_q == 0) return cudaSuccess;
  const bool bf16 = a.dtype == DType::kBF16;
  if (a.shape.head_dim == 64)
    return bf16 ? launch_forward<__nv_bfloat16, 64>(a, stream) : launch_forward<__half, 64>(a, stream);
  return bf16 ? launch_forward<__nv_bfloat16, 128>(a, stream) : launch_forward<__half, 128>(a, stream);
}

}  // namespace dha::kernels
