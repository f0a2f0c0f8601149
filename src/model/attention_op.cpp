// The dha:: attention ops: schemas (declared once), the reference implementation
// for CPU and any device without a kernel, and the autograd implementation.
// The CUDA implementations register themselves from kernels/glue/attention_cuda.cpp
// when the kernels are built, so nothing here knows whether they exist.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "dha/attention.h"

namespace dha {
namespace {

using torch::Tensor;
using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;

const c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, bool)>&
attention_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dha::grouped_attention", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                           const Tensor&, const Tensor&, bool)>();
  return op;
}

const c10::TypedOperatorHandle<Tensors2(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                        const Tensor&, bool)>&
forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dha::grouped_attention_fwd", "")
                             .typed<Tensors2(const Tensor&, const Tensor&, const Tensor&,
                                             const Tensor&, const Tensor&, bool)>();
  return op;
}

const c10::TypedOperatorHandle<Tensors3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                        const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                        bool)>&
backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dha::grouped_attention_bwd", "")
          .typed<Tensors3(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool)>();
  return op;
}

// Forward through dha::grouped_attention_fwd (saving out and lse), backward
// through dha::grouped_attention_bwd: the same pair on every device.
class GroupedAttentionFunction : public torch::autograd::Function<GroupedAttentionFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& k_map, const Tensor& v_map, bool causal) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = forward_op().call(q, k, v, k_map, v_map, causal);
    ctx->save_for_backward({q, k, v, out, lse, k_map, v_map});
    ctx->saved_data["causal"] = causal;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    auto [dq, dk, dv] = backward_op().call(grad_out, saved[0], saved[1], saved[2], saved[3],
                                           saved[4], saved[5], saved[6],
                                           ctx->saved_data["causal"].toBool());
    return {dq, dk, dv, Tensor(), Tensor(), Tensor()};
  }
};

Tensor attention_autograd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_map,
                          const Tensor& v_map, bool causal) {
  const bool needs_grad = torch::GradMode::is_enabled() &&
                          (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (!needs_grad) {
    // Nothing to differentiate: the device's plain forward, with no log-sum-exp kept.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return attention_op().call(q, k, v, k_map, v_map, causal);
  }
  if (q.is_cpu()) {
    // No fused kernel on CPU: let autograd differentiate the reference
    // (index_select + SDPA, whose fused CPU backward is several times faster
    // than the explicit _bwd op that stands in for the kernels' backward).
    return reference::attention(q, k, v, k_map, v_map, causal);
  }
  return GroupedAttentionFunction::apply(q, k, v, k_map, v_map, causal);
}

}  // namespace

Tensor grouped_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_map,
                         const Tensor& v_map, bool causal) {
  return attention_op().call(q, k, v, k_map, v_map, causal);
}

Tensors2 grouped_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& k_map, const Tensor& v_map, bool causal) {
  return forward_op().call(q, k, v, k_map, v_map, causal);
}

Tensors3 grouped_attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                    const Tensor& k_map, const Tensor& v_map, bool causal) {
  return backward_op().call(grad_out, q, k, v, out, lse, k_map, v_map, causal);
}

}  // namespace dha

TORCH_LIBRARY(dha, m) {
  m.def("grouped_attention(Tensor q, Tensor k, Tensor v, Tensor k_map, Tensor v_map, "
        "bool causal) -> Tensor");
  m.def("grouped_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor k_map, Tensor v_map, "
        "bool causal) -> (Tensor out, Tensor lse)");
  m.def("grouped_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor k_map, Tensor v_map, bool causal) -> (Tensor dq, Tensor dk, Tensor dv)");
}

// The reference serves the CPU and every backend without its own kernel; a
// backend kernel (CUDA, from the glue) takes precedence over it.
TORCH_LIBRARY_IMPL(dha, CompositeExplicitAutograd, m) {
  m.impl("grouped_attention", &dha::reference::attention);
  m.impl("grouped_attention_fwd", &dha::reference::attention_forward);
  m.impl("grouped_attention_bwd", &dha::reference::attention_backward);
}

TORCH_LIBRARY_IMPL(dha, Autograd, m) {
  m.impl("grouped_attention", &dha::attention_autograd);
}
