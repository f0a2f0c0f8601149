// Reference grouped attention written with plain tensor ops: the CPU implementation
// of the dha:: attention ops, the CUDA fallback, and the oracle of the kernel tests.
#include "dha/attention.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>

namespace dha::reference {
namespace {

// Half-precision inputs are computed in float32; float32 and float64 as they are.
torch::ScalarType compute_type(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  return (t == torch::kHalf || t == torch::kBFloat16) ? torch::kFloat32 : t;
}

// [T_q, T_k] bool, true where query t may read key j (bottom-right aligned).
torch::Tensor allowed(int64_t t_q, int64_t t_k, const torch::Device& device) {
  return torch::ones({t_q, t_k}, torch::TensorOptions().dtype(torch::kBool).device(device))
      .tril(t_k - t_q);
}

void check_map(const torch::Tensor& map, const char* name, int64_t n_heads, int64_t n_targets,
               const char* target, const torch::Tensor& q) {
  TORCH_CHECK(map.dim() == 1 && map.numel() == n_heads, "grouped_attention: ", name,
              " needs one entry per query head (", n_heads, "), got shape ", map.sizes());
  TORCH_CHECK(map.scalar_type() == torch::kInt64 || map.scalar_type() == torch::kInt32,
              "grouped_attention: ", name, " must be an integer tensor (int64), got ",
              map.scalar_type());
  TORCH_CHECK(map.device() == q.device(), "grouped_attention: ", name, " is on ", map.device(),
              " but q is on ", q.device(), "; move the map with .to(q.device())");
  if (map.device().is_cpu() && n_heads > 0) {
    const int64_t lo = map.min().item<int64_t>(), hi = map.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < n_targets, "grouped_attention: ", name, " has entries in [", lo,
                ", ", hi, "] but there are ", n_targets, " ", target, " heads");
  }
}

}  // namespace

void check_arguments(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& k_map, const torch::Tensor& v_map) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "grouped_attention: q, k, v must be [B, heads, T, d_h]");
  const int64_t n_heads = q.size(1), t_q = q.size(2), t_k = k.size(2);
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0),
              "grouped_attention: q, k, v need the same batch size, got ", q.size(0), ", ",
              k.size(0), ", ", v.size(0));
  TORCH_CHECK(k.size(3) == q.size(3) && v.size(3) == q.size(3),
              "grouped_attention: q, k, v need the same head dim, got ", q.size(3), ", ", k.size(3),
              ", ", v.size(3));
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "grouped_attention: q, k, v need one dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(),
              "grouped_attention: q, k, v must be on one device");
  TORCH_CHECK(k_map.numel() == n_heads && v_map.numel() == n_heads,
              "grouped_attention: k_map and v_map need one entry per query head (", n_heads, ")");
  TORCH_CHECK(t_q <= t_k && v.size(2) == t_k, "grouped_attention: need T_q <= T_k == T_v");
  check_map(k_map, "k_map", n_heads, k.size(1), "key", q);
  check_map(v_map, "v_map", n_heads, v.size(1), "value", q);
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal) {
  check_arguments(q, k, v, k_map, v_map);
  const int64_t t_q = q.size(2), t_k = k.size(2);
  const torch::Tensor k_heads = k.index_select(1, k_map);
  const torch::Tensor v_heads = v.index_select(1, v_map);
  if (!causal || t_q == 1) {
    // A single query at the end of the sequence sees every key: no mask needed.
    return at::scaled_dot_product_attention(q, k_heads, v_heads);
  }
  if (t_q == t_k) return at::scaled_dot_product_attention(q, k_heads, v_heads, {}, 0.0, true);
  // Queries continue a cached prefix: SDPA's is_causal aligns top-left, so pass
  // the bottom-right aligned mask explicitly.
  return at::scaled_dot_product_attention(q, k_heads, v_heads, allowed(t_q, t_k, q.device()));
}

std::tuple<torch::Tensor, torch::Tensor> attention_forward(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal) {
  check_arguments(q, k, v, k_map, v_map);
  const auto ct = compute_type(q);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  const torch::Tensor qc = q.to(ct);
  const torch::Tensor kc = k.index_select(1, k_map).to(ct);
  const torch::Tensor vc = v.index_select(1, v_map).to(ct);
  torch::Tensor s = torch::matmul(qc, kc.transpose(-2, -1)).mul_(scale);  // [B, H, T_q, T_k]
  if (causal) {
    s.masked_fill_(allowed(q.size(2), k.size(2), q.device()).logical_not(),
                   -std::numeric_limits<double>::infinity());
  }
  const torch::Tensor lse = torch::logsumexp(s, -1);  // [B, H, T_q]
  const torch::Tensor p = s.sub_(lse.unsqueeze(-1)).exp_();
  return {torch::matmul(p, vc).to(q.scalar_type()), lse};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> attention_backward(
    const torch::Tensor& grad_out, const torch::Tensor& q, const torch::Tensor& k,
    const torch::Tensor& v, const torch::Tensor& out, const torch::Tensor& lse,
    const torch::Tensor& k_map, const torch::Tensor& v_map, bool causal) {
  check_arguments(q, k, v, k_map, v_map);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "grouped_attention backward: grad_out and out must have q's shape ", q.sizes());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                  lse.size(2) == q.size(2),
              "grouped_attention backward: lse must be [B, H, T_q], got ", lse.sizes());
  const auto ct = compute_type(q);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  const torch::Tensor qc = q.to(ct), doc = grad_out.to(ct), oc = out.to(ct);
  const torch::Tensor kc = k.index_select(1, k_map).to(ct);
  const torch::Tensor vc = v.index_select(1, v_map).to(ct);
  // P recomputed from the saved log-sum-exp, as the kernels do.
  torch::Tensor p = torch::matmul(qc, kc.transpose(-2, -1))
                        .mul_(scale)
                        .sub_(lse.to(ct).unsqueeze(-1))
                        .exp_();
  if (causal) p.masked_fill_(allowed(q.size(2), k.size(2), q.device()).logical_not(), 0.0);
  const torch::Tensor dv_heads = torch::matmul(p.transpose(-2, -1), doc);  // [B, H, T_k, d_h]
  const torch::Tensor dp = torch::matmul(doc, vc.transpose(-2, -1));
  const torch::Tensor d_row = (doc * oc).sum(-1, /*keepdim=*/true);        // D = rowsum(dO o O)
  const torch::Tensor ds = p.mul_(dp.sub_(d_row));
  const torch::Tensor dq = torch::matmul(ds, kc).mul_(scale);
  const torch::Tensor dk_heads = torch::matmul(ds.transpose(-2, -1), qc).mul_(scale);
  // Each key/value head collects the gradients of every query head that reads it.
  const torch::Tensor dk = torch::zeros(k.sizes(), k.options().dtype(ct)).index_add_(1, k_map, dk_heads);
  const torch::Tensor dv = torch::zeros(v.sizes(), v.options().dtype(ct)).index_add_(1, v_map, dv_heads);
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace dha::reference
