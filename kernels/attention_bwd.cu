// Backward, FlashAttention-2 style. Because K and V have different head maps, a
// CTA works on (64-key tile, query head, batch): it holds K of key head k_map[h]
// and V of value head v_map[h], walks the query tiles that can see its keys,
// accumulates this query head's share of dK and dV in registers and adds it into
// fp32 accumulators of the key/value head (atomics: every query head that reads a
// head contributes), while dQ rows are added into an fp32 accumulator per tile.
// Three small kernels surround it: D = rowsum(dO o O) before, the casts after.
#include <cmath>

#include "common.cuh"

namespace dha::kernels {
namespace {

using detail::Half;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

template <int D>
__host__ __device__ constexpr int smem_row() {
  return D + 8;
}
constexpr int kDsRow = kBlockM + 8;  // dS^T tile [keys][queries]

template <typename T, int D>
constexpr size_t backward_smem_bytes() {
  return size_t(2 * kBlockN + 2 * kBlockM) * smem_row<D>() * sizeof(T) +
         size_t(kBlockN) * kDsRow * sizeof(T) + 2 * kBlockM * sizeof(float);
}

struct Workspace {
  float* dsum;  // [B, H, T_q]
  float* dq;    // [B, H, T_q, D]
  float* dk;    // [B, H_K, T_k, D]
  float* dv;    // [B, H_V, T_k, D]
};

Workspace carve(const BackwardArgs& a) {
  const AttentionShape& s = a.shape;
  Workspace w;
  w.dsum = a.workspace;
  w.dq = w.dsum + s.batch * s.heads * s.t_q;
  w.dk = w.dq + s.batch * s.heads * s.t_q * s.head_dim;
  w.dv = w.dk + s.batch * s.k_heads * s.t_k * s.head_dim;
  return w;
}

// D[b, h, t] = sum_d dO * O, one warp per row.
template <typename T, int D>
__global__ void dsum_kernel(const BackwardArgs a, float* dsum) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int64_t t_q = a.shape.t_q, heads = a.shape.heads;
  if (row >= a.shape.batch * heads * t_q) return;
  const int64_t t = row % t_q, h = (row / t_q) % heads, b = row / (t_q * heads);
  const T* o = static_cast<const T*>(a.out.ptr) + b * a.out.stride_b + h * a.out.stride_h +
               t * a.out.stride_t;
  const T* d = static_cast<const T*>(a.dout.ptr) + b * a.dout.stride_b + h * a.dout.stride_h +
               t * a.dout.stride_t;
  float acc = 0.0f;
#pragma unroll
  for (int c = 2 * lane; c < D; c += 64) {
    const float2 x = Half<T>::unpack(*reinterpret_cast<const uint32_t*>(o + c));
    const float2 y = Half<T>::unpack(*reinterpret_cast<const uint32_t*>(d + c));
    acc += x.x * y.x + x.y * y.y;
  }
  acc = detail::warp_sum(acc);
  if (lane == 0) dsum[row] = acc;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) backward_kernel(const BackwardArgs a, Workspace w) {
  constexpr int BM = kBlockM, BN = kBlockN, LD = smem_row<D>();
  constexpr int KT = D / 16;  // k-steps over the head dim
  constexpr int NO = D / 8;   // 8-column tiles of dK / dV
  static_assert(BN == 4 * 16 && BM == 2 * 32, "warp w: keys 16 (w % 4).., queries 32 (w / 4)..");

  extern __shared__ __align__(128) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + BN * LD;
  T* sQ = sV + BN * LD;
  T* sdO = sQ + BM * LD;
  T* sdS = sdO + BM * LD;  // [BN][kDsRow]: dS^T of this query tile
  float* sLse = reinterpret_cast<float*>(sdS + BN * kDsRow);
  float* sDsum = sLse + BM;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, c4 = lane % 4;
  const int key_slice = warp % 4, query_half = warp / 4;
  const int t_q = static_cast<int>(a.shape.t_q), t_k = static_cast<int>(a.shape.t_k);
  const int offset = t_k - t_q;
  const bool causal = a.shape.causal;
  const int n0 = blockIdx.x * BN;
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t kh = a.k_map[h], vh = a.v_map[h];
  const int64_t bh = static_cast<int64_t>(b) * a.shape.heads + h;
  float* dq_acc = w.dq + bh * t_q * D;

  if (!detail::map_ok(kh, a.shape.k_heads) || !detail::map_ok(vh, a.shape.v_heads)) {
    if (blockIdx.x == 0)
      for (int i = tid; i < t_q * D; i += kThreads) dq_acc[i] = NAN;
    return;
  }
  // Causal: the first query that reads key n0 is n0 - offset.
  const int m_begin = causal ? max(0, n0 - offset) / BM : 0;
  const int m_end = (t_q + BM - 1) / BM;
  if (m_begin >= m_end) return;  // no query reads these keys: nothing to add

  const T* kg = static_cast<const T*>(a.k.ptr) + b * a.k.stride_b + kh * a.k.stride_h;
  const T* vg = static_cast<const T*>(a.v.ptr) + b * a.v.stride_b + vh * a.v.stride_h;
  const T* qg = static_cast<const T*>(a.q.ptr) + b * a.q.stride_b + h * a.q.stride_h;
  const T* dog = static_cast<const T*>(a.dout.ptr) + b * a.dout.stride_b + h * a.dout.stride_h;
  const float* lse = a.lse + bh * t_q;
  const float* dsum = w.dsum + bh * t_q;

  detail::load_tile_async<T, D, LD, BN, kThreads>(sK, kg, a.k.stride_t, n0, t_k, tid);
  detail::load_tile_async<T, D, LD, BN, kThreads>(sV, vg, a.v.stride_t, n0, t_k, tid);
  detail::cp_async_commit();

  const float scale_log2 = a.shape.scale * detail::kLog2e;
  float dk[NO][4], dv[NO][4];
#pragma unroll
  for (int j = 0; j < NO; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.0f;

  for (int mb = m_begin; mb < m_end; ++mb) {
    const int m0 = mb * BM;
    detail::load_tile_async<T, D, LD, BM, kThreads>(sQ, qg, a.q.stride_t, m0, t_q, tid);
    detail::load_tile_async<T, D, LD, BM, kThreads>(sdO, dog, a.dout.stride_t, m0, t_q, tid);
    detail::cp_async_commit();
    if (tid < BM) {
      const int row = m0 + tid;
      sLse[tid] = row < t_q ? lse[row] * detail::kLog2e : INFINITY;
      sDsum[tid] = row < t_q ? dsum[row] : 0.0f;
    }
    detail::cp_async_wait_all();
    __syncthreads();

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 32 queries.
    float s[4][4], dp[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      uint32_t kf[4], vf[4];
      const int a_off = (key_slice * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8;
      detail::ldmatrix_x4(kf, sK + a_off);
      detail::ldmatrix_x4(vf, sV + a_off);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t qf[4], of[4];
        const int b_off = (query_half * 32 + np * 16 + lane % 8 + (lane / 16) * 8) * LD +
                          kk * 16 + ((lane / 8) % 2) * 8;
        detail::ldmatrix_x4(qf, sQ + b_off);
        detail::ldmatrix_x4(of, sdO + b_off);
        Half<T>::mma(s[2 * np], kf, qf[0], qf[1]);
        Half<T>::mma(s[2 * np + 1], kf, qf[2], qf[3]);
        Half<T>::mma(dp[2 * np], vf, of[0], of[1]);
        Half<T>::mma(dp[2 * np + 1], vf, of[2], of[3]);
      }
    }

    // P^T from the saved log-sum-exp; dS^T = P^T o (dP^T - D).
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = n0 + key_slice * 16 + g + (e / 2) * 8;
        const int ql = query_half * 32 + j * 8 + 2 * c4 + (e & 1);
        const int query = m0 + ql;
        const bool ok = key < t_k && query < t_q && (!causal || key <= query + offset);
        const float p = ok ? exp2f(s[j][e] * scale_log2 - sLse[ql]) : 0.0f;
        s[j][e] = p;
        dp[j][e] = p * (dp[j][e] - sDsum[ql]);
      }
    }

    // dV += P^T dO and dK += dS^T Q over this warp's 32 queries.
#pragma unroll
    for (int kc = 0; kc < 2; ++kc) {
      const uint32_t pf[4] = {Half<T>::pack(s[2 * kc][0], s[2 * kc][1]),
                              Half<T>::pack(s[2 * kc][2], s[2 * kc][3]),
                              Half<T>::pack(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                              Half<T>::pack(s[2 * kc + 1][2], s[2 * kc + 1][3])};
      const uint32_t df[4] = {Half<T>::pack(dp[2 * kc][0], dp[2 * kc][1]),
                              Half<T>::pack(dp[2 * kc][2], dp[2 * kc][3]),
                              Half<T>::pack(dp[2 * kc + 1][0], dp[2 * kc + 1][1]),
                              Half<T>::pack(dp[2 * kc + 1][2], dp[2 * kc + 1][3])};
#pragma unroll
      for (int dn = 0; dn < NO / 2; ++dn) {
        uint32_t of[4], qf[4];
        const int off = (query_half * 32 + kc * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD +
                        dn * 16 + (lane / 16) * 8;
        detail::ldmatrix_x4_trans(of, sdO + off);
        detail::ldmatrix_x4_trans(qf, sQ + off);
        Half<T>::mma(dv[2 * dn], pf, of[0], of[1]);
        Half<T>::mma(dv[2 * dn + 1], pf, of[2], of[3]);
        Half<T>::mma(dk[2 * dn], df, qf[0], qf[1]);
        Half<T>::mma(dk[2 * dn + 1], df, qf[2], qf[3]);
      }
    }

    // dS^T to shared memory for dQ = dS K, which mixes all warps' keys.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        *reinterpret_cast<uint32_t*>(sdS + (key_slice * 16 + g + r * 8) * kDsRow +
                                     query_half * 32 + j * 8 + 2 * c4) =
            Half<T>::pack(dp[j][2 * r], dp[j][2 * r + 1]);
      }
    }
    __syncthreads();

    // dQ rows 16 (warp % 4).. and head-dim half (warp / 4): A = dS from dS^T (transposed load).
    {
      const int qs = warp % 4, dh = warp / 4;
      uint32_t af[4][4];
#pragma unroll
      for (int kc = 0; kc < 4; ++kc)
        detail::ldmatrix_x4_trans(
            af[kc], sdS + (kc * 16 + lane % 8 + (lane / 16) * 8) * kDsRow + qs * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
      for (int dn = 0; dn < D / 32; ++dn) {
        const int col = dh * (D / 2) + dn * 16;
        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
          uint32_t kf[4];
          detail::ldmatrix_x4_trans(
              kf, sK + (kc * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + col + (lane / 16) * 8);
          Half<T>::mma(acc[0], af[kc], kf[0], kf[1]);
          Half<T>::mma(acc[1], af[kc], kf[2], kf[3]);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = m0 + qs * 16 + g + r * 8;
          if (row >= t_q) continue;
          float* dst = dq_acc + static_cast<int64_t>(row) * D + col + 2 * c4;
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            atomicAdd(dst + j * 8, acc[j][2 * r]);
            atomicAdd(dst + j * 8 + 1, acc[j][2 * r + 1]);
          }
        }
      }
    }
    __syncthreads();  // sQ, sdO, sdS are reloaded next
  }

  // This query head's share of dK (scaled) and dV, added into its heads' accumulators.
  float* dk_acc = w.dk + (static_cast<int64_t>(b) * a.shape.k_heads + kh) * t_k * D;
  float* dv_acc = w.dv + (static_cast<int64_t>(b) * a.shape.v_heads + vh) * t_k * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = n0 + key_slice * 16 + g + r * 8;
    if (key >= t_k) continue;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      const int64_t off = static_cast<int64_t>(key) * D + j * 8 + 2 * c4;
      atomicAdd(dk_acc + off, dk[j][2 * r] * a.shape.scale);
      atomicAdd(dk_acc + off + 1, dk[j][2 * r + 1] * a.shape.scale);
      atomicAdd(dv_acc + off, dv[j][2 * r]);
      atomicAdd(dv_acc + off + 1, dv[j][2 * r + 1]);
    }
  }
}

// out = acc * scale in T, acc a contiguous [B, heads, T, D] float tensor.
template <typename T>
__global__ void cast_kernel(const float* acc, StridedOut out, int64_t heads, int64_t t, int d,
                            float scale, int64_t pairs) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = 2 * i, row = e / d, col = e % d;
    const int64_t tt = row % t, hh = (row / t) % heads, bb = row / (t * heads);
    T* dst = static_cast<T*>(out.ptr) + bb * out.stride_b + hh * out.stride_h + tt * out.stride_t + col;
    *reinterpret_cast<uint32_t*>(dst) = Half<T>::pack(acc[e] * scale, acc[e + 1] * scale);
  }
}

template <typename T>
cudaError_t launch_cast(const float* acc, const StridedOut& out, int64_t batch, int64_t heads,
                        int64_t t, int d, float scale, cudaStream_t stream) {
  const int64_t pairs = batch * heads * t * d / 2;
  if (pairs == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((pairs + threads - 1) / threads, 65536);
  cast_kernel<T><<<unsigned(blocks), threads, 0, stream>>>(acc, out, heads, t, d, scale, pairs);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_backward(const BackwardArgs& a, cudaStream_t stream) {
  const AttentionShape& s = a.shape;
  const Workspace w = carve(a);
  // dq, dk, dv accumulators start at zero (D is written in full by dsum_kernel).
  const size_t acc_floats = size_t(backward_workspace_floats(s) - s.batch * s.heads * s.t_q);
  cudaError_t err = cudaMemsetAsync(w.dq, 0, acc_floats * sizeof(float), stream);
  if (err != cudaSuccess) return err;

  if (s.t_q > 0 && s.t_k > 0) {
    const int64_t rows = s.batch * s.heads * s.t_q;
    dsum_kernel<T, D><<<unsigned((rows + 7) / 8), 256, 0, stream>>>(a, w.dsum);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;

    constexpr size_t smem = backward_smem_bytes<T, D>();
    auto kernel = backward_kernel<T, D>;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
    const dim3 grid(unsigned((s.t_k + kBlockN - 1) / kBlockN), unsigned(s.heads),
                    unsigned(s.batch));
    kernel<<<grid, kThreads, smem, stream>>>(a, w);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }

  err = launch_cast<T>(w.dq, a.dq, s.batch, s.heads, s.t_q, D, s.scale, stream);
  if (err != cudaSuccess) return err;
  err = launch_cast<T>(w.dk, a.dk, s.batch, s.k_heads, s.t_k, D, 1.0f, stream);
  if (err != cudaSuccess) return err;
  return launch_cast<T>(w.dv, a.dv, s.batch, s.v_heads, s.t_k, D, 1.0f, stream);
}

}  // namespace

cudaError_t attention_backward(const BackwardArgs& a, cudaStream_t stream) {
  if (!head_dim_supported(a.shape.head_dim) || a.workspace == nullptr) return cudaErrorInvalidValue;
  if (a.shape.batch == 0 || a.shape.heads == 0) return cudaSuccess;
  const bool bf16 = a.dtype == DType::kBF16;
  if (a.shape.head_dim == 64)
    return bf16 ? launch_backward<__nv_bfloat16, 64>(a, stream) : launch_backward<__half, 64>(a, stream);
  return bf16 ? launch_backward<__nv_bfloat16, 128>(a, stream) : launch_backward<__half, 128>(a, stream);
}

}  // namespace dha::kernels
