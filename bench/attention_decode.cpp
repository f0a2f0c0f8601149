// Decode (a few new queries against a long KV cache): the DHA split-K kernel
// against (a) SDPA on the cache expanded with index_select, (b) dense MHA SDPA
// and (c) GQA SDPA (enable_gqa) at the same KV budget. GB/s = bytes of K/V cache
// each method must read (its own cache) over time; the ceiling is a device copy
// measured in the same run. Input sets rotate so the cache never sits in L2.
#include <array>
#include <cstdio>
#include <exception>

#include "bench_common.h"
#include "dha/attention.h"

namespace {

// Enough copies of a cache of `bytes` that cycling through them spans 1 GiB.
int64_t copies_for(double bytes) { return std::max<int64_t>(1, static_cast<int64_t>((1 << 30) / bytes) + 1); }

}  // namespace

int main(int argc, char** argv) {
  try {
    const dha::bench::Options o(argc, argv);
    if (o.help()) {
      std::printf(
          "bench_attention_decode [--batch 1,8] [--heads 32] [--k-heads 8] [--v-heads 12] [--dim 128]\n"
          "  [--cache 8192,32768] [--queries 1] [--dtype bf16|fp16] [--iters 20] [--repeats 5] [--seed 0]\n");
      return 0;
    }
    if (!dha::bench::require_cuda("bench_attention_decode")) return 0;
    const dha::bench::HeadSetup setup = dha::bench::head_setup(o);
    const int64_t h = setup.h, h_k = setup.h_k, h_v = setup.h_v, d = setup.d, g = setup.g;
    const std::string& dtype_name = setup.dtype_name;
    const torch::TensorOptions& options = setup.options;
    const torch::Tensor &k_map = setup.k_map, &v_map = setup.v_map;
    const int64_t t_q = o.integer("queries", 1);
    const int iters = static_cast<int>(o.integer("iters", 20)), repeats = static_cast<int>(o.integer("repeats", 5));
    const double copy = dha::bench::copy_gbps(torch::kCUDA);
    std::printf("device copy: %.0f GB/s (read + write)\n", copy);
    torch::NoGradGuard no_grad;

    for (const int64_t b : o.integers("batch", {1, 8})) {
      for (const int64_t t : o.integers("cache", {8192, 32768})) {
        const double elem = static_cast<double>(torch::elementSize(dha::bench::dtype_of(dtype_name)));
        const double head_bytes = static_cast<double>(b) * t * d * elem;
        // (bytes, ms) per method; each cycles through its own copies of q, K, V.
        auto run = [&](int64_t n_k, int64_t n_v, auto&& attend) {
          const int64_t n = copies_for(head_bytes * (n_k + n_v));
          std::vector<std::array<torch::Tensor, 3>> sets;
          for (int64_t i = 0; i < n; ++i)
            sets.push_back({torch::randn({b, h, t_q, d}, options), torch::randn({b, n_k, t, d}, options),
                            torch::randn({b, n_v, t, d}, options)});
          int64_t next = 0;
          const double ms = dha::bench::median_ms(
              [&] {
                const auto& s = sets[next++ % n];
                attend(s[0], s[1], s[2]);
              },
              3, iters, repeats);
          return ms;
        };
        const double ms_dha = run(h_k, h_v, [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
          return dha::grouped_attention(q, k, v, k_map, v_map, true);
        });
        const double ms_exp = run(h_k, h_v, [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
          return dha::reference::attention(q, k, v, k_map, v_map, true);
        });
        const double ms_mha = run(h, h, [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
          return at::scaled_dot_product_attention(q, k, v);
        });
        const double ms_gqa = run(g, g, [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
          return at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, std::nullopt, true);
        });
        const torch::Tensor q = torch::randn({b, h, t_q, d}, options);
        const torch::Tensor k = torch::randn({b, h_k, t, d}, options), v = torch::randn({b, h_v, t, d}, options);
        const double err = (dha::grouped_attention(q, k, v, k_map, v_map, true) -
                            dha::reference::attention(q, k, v, k_map, v_map, true))
                               .abs()
                               .max()
                               .item<double>();
        auto gbps = [&](double heads, double ms) { return heads * head_bytes / (ms * 1e6); };
        std::printf("decode B=%lld H=%lld H_K=%lld H_V=%lld T_q=%lld T_k=%lld d=%lld %s\n", (long long)b,
                    (long long)h, (long long)h_k, (long long)h_v, (long long)t_q, (long long)t, (long long)d,
                    dtype_name.c_str());
        const double dha_gbps = gbps(double(h_k + h_v), ms_dha);
        std::printf("  %-34s %9.1f us %8.0f GB/s (%.0f%% of copy)\n", "dha kernel", ms_dha * 1e3, dha_gbps,
                    100.0 * dha_gbps / copy);
        std::printf("  %-34s %9.1f us %8.0f GB/s of the DHA cache\n", "(a) SDPA on index_select K/V",
                    ms_exp * 1e3, gbps(double(h_k + h_v), ms_exp));
        std::printf("  %-34s %9.1f us %8.0f GB/s\n", "(b) dense MHA SDPA", ms_mha * 1e3, gbps(2.0 * h, ms_mha));
        char gqa_name[64];
        std::snprintf(gqa_name, sizeof gqa_name, "(c) GQA SDPA, %lld groups", (long long)g);
        std::printf("  %-34s %9.1f us %8.0f GB/s\n", gqa_name, ms_gqa * 1e3, gbps(2.0 * g, ms_gqa));
        std::printf("  dha speed: %.2fx (a)  %.2fx (b)  %.2fx (c)   max|dha - (a)| = %.3g\n", ms_exp / ms_dha,
                    ms_mha / ms_dha, ms_gqa / ms_dha, err);
        std::fflush(stdout);
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_decode: %s\n", e.what());
    return 1;
  }
}
