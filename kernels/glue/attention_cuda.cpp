// CUDA implementations of the dha:: attention ops: checks and views in torch,
// then the dha_kernels launches on the current stream. Compiled into libdha
// only when the kernels are built and LibTorch has CUDA (kernels/CMakeLists.txt);
// registering here is all it takes for the ops to use them.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

#include "../dha_kernels.h"
#include "dha/attention.h"

namespace dha {
namespace {

namespace kn = dha::kernels;
using torch::Tensor;

bool kernel_dtype(const Tensor& x) {
  return x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf;
}

bool kernels_apply(const Tensor& q) {
  return kernel_dtype(q) && kn::head_dim_supported(q.size(3));
}

// What the kernels read: unit stride along d_h and 16-byte aligned rows.
bool kernel_layout(const Tensor& x) {
  const int64_t bytes = x.element_size();
  if (x.size(3) > 1 && x.stride(3) != 1) return false;
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d)
    if (x.size(d) > 1 && (x.stride(d) * bytes) % 16 != 0) return false;
  return true;
}

Tensor kernel_view(const Tensor& x) {
  if (kernel_layout(x)) return x;
  Tensor y = x.contiguous();
  return kernel_layout(y) ? y : x.clone(at::MemoryFormat::Contiguous);
}

kn::Strided strided(const Tensor& x) {
  return {x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)};
}

kn::StridedOut strided_out(Tensor& x) {
  return {x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)};
}

kn::AttentionShape shape_of(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  kn::AttentionShape s;
  s.batch = q.size(0);
  s.heads = q.size(1);
  s.k_heads = k.size(1);
  s.v_heads = v.size(1);
  s.t_q = q.size(2);
  s.t_k = k.size(2);
  s.head_dim = q.size(3);
  s.causal = causal;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  return s;
}

Tensor map_view(const Tensor& map) { return map.to(torch::kInt64).contiguous(); }

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "grouped_attention: CUDA ", what, " kernel failed: ",
              cudaGetErrorString(err));
}

std::tuple<Tensor, Tensor> forward_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                        const Tensor& k_map, const Tensor& v_map, bool causal) {
  reference::check_arguments(q_in, k_in, v_in, k_map, v_map);
  if (!kernels_apply(q_in)) return reference::attention_forward(q_in, k_in, v_in, k_map, v_map, causal);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t b = q_in.size(0), h = q_in.size(1), t_q = q_in.size(2), d = q_in.size(3);
  // [B, T_q, H, d_h] in memory: the model's transpose(1, 2).reshape is then free.
  Tensor out = at::empty({b, t_q, h, d}, q_in.options()).transpose(1, 2);
  Tensor lse = at::empty({b, h, t_q}, q_in.options().dtype(torch::kFloat32));
  if (out.numel() == 0) return {out, lse};

  const Tensor q = kernel_view(q_in), k = kernel_view(k_in), v = kernel_view(v_in);
  const Tensor km = map_view(k_map), vm = map_view(v_map);
  kn::ForwardArgs args;
  args.shape = shape_of(q, k, v, causal);
  args.dtype = q.scalar_type() == torch::kBFloat16 ? kn::DType::kBF16 : kn::DType::kFP16;
  args.q = strided(q);
  args.k = strided(k);
  args.v = strided(v);
  args.k_map = km.data_ptr<int64_t>();
  args.v_map = vm.data_ptr<int64_t>();
  args.out = strided_out(out);
  args.lse = lse.data_ptr<float>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (kn::use_decode_kernel(args.shape)) {
    const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const kn::DecodePlan plan = kn::plan_decode(args.shape, sms);
    Tensor workspace = at::empty({plan.workspace_floats}, q.options().dtype(torch::kFloat32));
    check_launch(kn::attention_decode(args, plan, workspace.data_ptr<float>(), stream), "decode");
  } else {
    check_launch(kn::attention_forward(args, stream), "forward");
  }
  return {out, lse};
}

Tensor attention_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_map,
                      const Tensor& v_map, bool causal) {
  if (!kernels_apply(q)) return reference::attention(q, k, v, k_map, v_map, causal);
  return std::get<0>(forward_cuda(q, k, v, k_map, v_map, causal));
}

std::tuple<Tensor, Tensor, Tensor> backward_cuda(const Tensor& grad_out, const Tensor& q_in,
                                                 const Tensor& k_in, const Tensor& v_in,
                                                 const Tensor& out_in, const Tensor& lse_in,
                                                 const Tensor& k_map, const Tensor& v_map,
                                                 bool causal) {
  reference::check_arguments(q_in, k_in, v_in, k_map, v_map);
  TORCH_CHECK(grad_out.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
              "grouped_attention backward: grad_out and out must have q's shape ", q_in.sizes());
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == q_in.size(0) && lse_in.size(1) == q_in.size(1) &&
                  lse_in.size(2) == q_in.size(2),
              "grouped_attention backward: lse must be [B, H, T_q], got ", lse_in.sizes());
  if (!kernels_apply(q_in) || lse_in.scalar_type() != torch::kFloat32 ||
      grad_out.scalar_type() != q_in.scalar_type() || out_in.scalar_type() != q_in.scalar_type()) {
    return reference::attention_backward(grad_out, q_in, k_in, v_in, out_in, lse_in, k_map, v_map,
                                         causal);
  }
  const c10::cuda::CUDAGuard guard(q_in.device());
  Tensor dq = at::empty_like(q_in), dk = at::empty_like(k_in), dv = at::empty_like(v_in);
  if (!kernel_layout(dq)) dq = at::empty(q_in.sizes(), q_in.options());
  if (!kernel_layout(dk)) dk = at::empty(k_in.sizes(), k_in.options());
  if (!kernel_layout(dv)) dv = at::empty(v_in.sizes(), v_in.options());
  if (q_in.numel() == 0 || k_in.numel() == 0) {
    return {dq.zero_(), dk.zero_(), dv.zero_()};
  }

  const Tensor q = kernel_view(q_in), k = kernel_view(k_in), v = kernel_view(v_in);
  const Tensor out = kernel_view(out_in), dout = kernel_view(grad_out);
  const Tensor lse = lse_in.contiguous();
  const Tensor km = map_view(k_map), vm = map_view(v_map);
  kn::BackwardArgs args;
  args.shape = shape_of(q, k, v, causal);
  args.dtype = q.scalar_type() == torch::kBFloat16 ? kn::DType::kBF16 : kn::DType::kFP16;
  args.q = strided(q);
  args.k = strided(k);
  args.v = strided(v);
  args.out = strided(out);
  args.dout = strided(dout);
  args.lse = lse.data_ptr<float>();
  args.k_map = km.data_ptr<int64_t>();
  args.v_map = vm.data_ptr<int64_t>();
  args.dq = strided_out(dq);
  args.dk = strided_out(dk);
  args.dv = strided_out(dv);
  Tensor workspace = at::empty({kn::backward_workspace_floats(args.shape)},
                               q.options().dtype(torch::kFloat32));
  args.workspace = workspace.data_ptr<float>();
  check_launch(kn::attention_backward(args, at::cuda::getCurrentCUDAStream()), "backward");
  return {dq, dk, dv};
}

}  // namespace
}  // namespace dha

TORCH_LIBRARY_IMPL(dha, CUDA, m) {
  m.impl("grouped_attention", &dha::attention_cuda);
  m.impl("grouped_attention_fwd", &dha::forward_cuda);
  m.impl("grouped_attention_bwd", &dha::backward_cuda);
}
