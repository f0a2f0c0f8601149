// Backward (dq, dk, dv): the DHA kernels against (a) autograd through SDPA on K/V
// expanded with index_select (its backward sums the expanded gradients back),
// (b) dense MHA SDPA and (c) GQA SDPA (enable_gqa) at the same KV budget.
// TFLOP/s: 2.5 x the forward's 4 B T^2 H d_h, halved when causal.
#include <cstdio>
#include <exception>

#include "bench_common.h"
#include "dha/attention.h"

namespace {

// Times the backward alone: the graph is built once and replayed with retain_graph.
double backward_ms(const torch::Tensor& out, const std::vector<torch::Tensor>& inputs, const torch::Tensor& dout,
                   int iters, int repeats) {
  return dha::bench::median_ms([&] { torch::autograd::grad({out}, inputs, {dout}, /*retain_graph=*/true); }, 2,
                               iters, repeats);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const dha::bench::Options o(argc, argv);
    if (o.help()) {
      std::printf(
          "bench_attention_backward [--batch 1] [--heads 32] [--k-heads 8] [--v-heads 12] [--dim 128]\n"
          "  [--seq 4096,8192] [--dtype bf16|fp16] [--causal 1,0] [--iters 5] [--repeats 5] [--seed 0]\n");
      return 0;
    }
    if (!dha::bench::require_cuda("bench_attention_backward")) return 0;
    const dha::bench::HeadSetup setup = dha::bench::head_setup(o);
    const int64_t h = setup.h, h_k = setup.h_k, h_v = setup.h_v, d = setup.d, g = setup.g;
    const std::string& dtype_name = setup.dtype_name;
    const torch::TensorOptions& options = setup.options;
    const torch::Tensor &k_map = setup.k_map, &v_map = setup.v_map;
    const int64_t b = o.integer("batch", 1);
    const int iters = static_cast<int>(o.integer("iters", 5)), repeats = static_cast<int>(o.integer("repeats", 5));

    for (const int64_t t : o.integers("seq", {4096, 8192})) {
      for (const int64_t causal_flag : o.integers("causal", {1, 0})) {
        const bool causal = causal_flag != 0;
        auto leaf = [&](int64_t heads) { return torch::randn({b, heads, t, d}, options).requires_grad_(); };
        const torch::Tensor q = leaf(h), k = leaf(h_k), v = leaf(h_v);
        const torch::Tensor dout = torch::randn({b, h, t, d}, options);
        const torch::Tensor out_dha = dha::grouped_attention(q, k, v, k_map, v_map, causal);
        const torch::Tensor out_exp = at::scaled_dot_product_attention(q, k.index_select(1, k_map),
                                                                       v.index_select(1, v_map), {}, 0.0, causal);
        const double ms_dha = backward_ms(out_dha, {q, k, v}, dout, iters, repeats);
        const double ms_exp = backward_ms(out_exp, {q, k, v}, dout, iters, repeats);
        double ms_mha = 0.0, ms_gqa = 0.0;
        {
          const torch::Tensor km = leaf(h), vm = leaf(h);
          const torch::Tensor out = at::scaled_dot_product_attention(q, km, vm, {}, 0.0, causal);
          ms_mha = backward_ms(out, {q, km, vm}, dout, iters, repeats);
        }
        {
          const torch::Tensor kg = leaf(g), vg = leaf(g);
          const torch::Tensor out = at::scaled_dot_product_attention(q, kg, vg, {}, 0.0, causal, std::nullopt, true);
          ms_gqa = backward_ms(out, {q, kg, vg}, dout, iters, repeats);
        }
        const auto g_dha = torch::autograd::grad({out_dha}, {q, k, v}, {dout}, true);
        const auto g_exp = torch::autograd::grad({out_exp}, {q, k, v}, {dout}, true);
        double err = 0.0;
        for (int i = 0; i < 3; ++i) err = std::max(err, (g_dha[i] - g_exp[i]).abs().max().item<double>());
        const double flops = 2.5 * 4.0 * b * t * t * h * d / (causal ? 2.0 : 1.0);
        auto tflops = [&](double ms) { return flops / (ms * 1e9); };
        std::printf("backward B=%lld H=%lld H_K=%lld H_V=%lld T=%lld d=%lld %s %s\n", (long long)b, (long long)h,
                    (long long)h_k, (long long)h_v, (long long)t, (long long)d, dtype_name.c_str(),
                    causal ? "causal" : "full");
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", "dha kernels", ms_dha, tflops(ms_dha));
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", "(a) SDPA on index_select K/V", ms_exp, tflops(ms_exp));
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", "(b) dense MHA SDPA", ms_mha, tflops(ms_mha));
        char gqa_name[64];
        std::snprintf(gqa_name, sizeof gqa_name, "(c) GQA SDPA, %lld groups", (long long)g);
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", gqa_name, ms_gqa, tflops(ms_gqa));
        std::printf("  dha speed: %.2fx (a)  %.2fx (b)  %.2fx (c)   max|grad dha - grad (a)| = %.3g\n",
                    ms_exp / ms_dha, ms_mha / ms_dha, ms_gqa / ms_dha, err);
        std::fflush(stdout);
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_backward: %s\n", e.what());
    return 1;
  }
}
