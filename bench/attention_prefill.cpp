// Prefill forward: the DHA kernel against (a) SDPA on K/V expanded to every query
// head with index_select, (b) dense MHA SDPA and (c) GQA SDPA (enable_gqa) at the
// same KV budget, in one run. TFLOP/s on query heads: 4 B T^2 H d_h, halved when causal.
#include <cstdio>
#include <exception>

#include "bench_common.h"
#include "dha/attention.h"

int main(int argc, char** argv) {
  try {
    const dha::bench::Options o(argc, argv);
    if (o.help()) {
      std::printf(
          "bench_attention_prefill [--batch 1] [--heads 32] [--k-heads 8] [--v-heads 12] [--dim 128]\n"
          "  [--seq 4096,8192] [--dtype bf16|fp16] [--causal 1,0] [--iters 10] [--repeats 5] [--seed 0]\n");
      return 0;
    }
    if (!dha::bench::require_cuda("bench_attention_prefill")) return 0;
    const dha::bench::HeadSetup setup = dha::bench::head_setup(o);
    const int64_t h = setup.h, h_k = setup.h_k, h_v = setup.h_v, d = setup.d, g = setup.g;
    const std::string& dtype_name = setup.dtype_name;
    const torch::TensorOptions& options = setup.options;
    const torch::Tensor &k_map = setup.k_map, &v_map = setup.v_map;
    const int64_t b = o.integer("batch", 1);
    const int iters = static_cast<int>(o.integer("iters", 10)), repeats = static_cast<int>(o.integer("repeats", 5));
    torch::NoGradGuard no_grad;

    for (const int64_t t : o.integers("seq", {4096, 8192})) {
      for (const int64_t causal_flag : o.integers("causal", {1, 0})) {
        const bool causal = causal_flag != 0;
        const torch::Tensor q = torch::randn({b, h, t, d}, options);
        const torch::Tensor k = torch::randn({b, h_k, t, d}, options), v = torch::randn({b, h_v, t, d}, options);
        const torch::Tensor k_mha = torch::randn({b, h, t, d}, options), v_mha = torch::randn({b, h, t, d}, options);
        const torch::Tensor k_gqa = torch::randn({b, g, t, d}, options), v_gqa = torch::randn({b, g, t, d}, options);
        auto expanded = [&] {
          return at::scaled_dot_product_attention(q, k.index_select(1, k_map), v.index_select(1, v_map), {},
                                                  0.0, causal);
        };
        const double ms_dha = dha::bench::median_ms(
            [&] { dha::grouped_attention(q, k, v, k_map, v_map, causal); }, 3, iters, repeats);
        const double ms_exp = dha::bench::median_ms(expanded, 3, iters, repeats);
        const double ms_mha = dha::bench::median_ms(
            [&] { at::scaled_dot_product_attention(q, k_mha, v_mha, {}, 0.0, causal); }, 3, iters, repeats);
        const double ms_gqa = dha::bench::median_ms(
            [&] { at::scaled_dot_product_attention(q, k_gqa, v_gqa, {}, 0.0, causal, std::nullopt, true); }, 3,
            iters, repeats);
        const double err =
            (dha::grouped_attention(q, k, v, k_map, v_map, causal) - expanded()).abs().max().item<double>();
        const double flops = 4.0 * b * t * t * h * d / (causal ? 2.0 : 1.0);
        auto tflops = [&](double ms) { return flops / (ms * 1e9); };
        std::printf("prefill fwd B=%lld H=%lld H_K=%lld H_V=%lld T=%lld d=%lld %s %s\n", (long long)b,
                    (long long)h, (long long)h_k, (long long)h_v, (long long)t, (long long)d,
                    dtype_name.c_str(), causal ? "causal" : "full");
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", "dha kernel", ms_dha, tflops(ms_dha));
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", "(a) SDPA on index_select K/V", ms_exp, tflops(ms_exp));
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", "(b) dense MHA SDPA", ms_mha, tflops(ms_mha));
        char gqa_name[64];
        std::snprintf(gqa_name, sizeof gqa_name, "(c) GQA SDPA, %lld groups", (long long)g);
        std::printf("  %-34s %9.3f ms %8.1f TFLOP/s\n", gqa_name, ms_gqa, tflops(ms_gqa));
        std::printf("  dha speed: %.2fx (a)  %.2fx (b)  %.2fx (c)   max|dha - (a)| = %.3g\n", ms_exp / ms_dha,
                    ms_mha / ms_dha, ms_gqa / ms_dha, err);
        std::fflush(stdout);
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_prefill: %s\n", e.what());
    return 1;
  }
}
