// The dha:: attention ops: dispatch, the forward/backward pair against autograd
// of the reference and against finite differences (float64, CPU), argument
// errors, the decode launch plan, and on a CUDA device the kernels against a
// float64 reference under flash-attention's rule: the kernel's error is at most
// twice that of plain PyTorch ops in the same precision.
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "../kernels/attention_plan.h"
#include "dha/attention.h"

namespace {

using torch::Tensor;

struct Layout {
  std::string name;
  std::vector<int64_t> k_map, v_map;
  int64_t n_k() const { return *std::max_element(k_map.begin(), k_map.end()) + 1; }
  int64_t n_v() const { return *std::max_element(v_map.begin(), v_map.end()) + 1; }
};

Layout mha(int64_t h) {
  std::vector<int64_t> id(h);
  for (int64_t i = 0; i < h; ++i) id[i] = i;
  return {"mha", id, id};
}

Layout gqa(int64_t h, int64_t groups) {
  std::vector<int64_t> map(h);
  for (int64_t i = 0; i < h; ++i) map[i] = i / (h / groups);
  return {"gqa", map, map};
}

// Unequal, non-contiguous groups, different for K and V (every head used).
std::vector<int64_t> random_onto(int64_t heads, int64_t groups, std::mt19937& rng) {
  std::vector<int64_t> map(heads);
  for (int64_t i = 0; i < heads; ++i) map[i] = i < groups ? i : static_cast<int64_t>(rng() % groups);
  std::shuffle(map.begin(), map.end(), rng);
  return map;
}

Layout dha_layout(int64_t h, int64_t h_k, int64_t h_v, unsigned seed) {
  std::mt19937 rng(seed);
  return {"dha", random_onto(h, h_k, rng), random_onto(h, h_v, rng)};
}

Tensor map_tensor(const std::vector<int64_t>& map, const torch::Device& device = torch::kCPU) {
  return torch::tensor(map, torch::kInt64).to(device);
}

struct Inputs {
  Tensor q, k, v, k_map, v_map;
};

Inputs random_inputs(const Layout& layout, int64_t b, int64_t t_q, int64_t t_k, int64_t d,
                     torch::TensorOptions options) {
  const int64_t h = static_cast<int64_t>(layout.k_map.size());
  return {torch::randn({b, h, t_q, d}, options), torch::randn({b, layout.n_k(), t_k, d}, options),
          torch::randn({b, layout.n_v(), t_k, d}, options),
          map_tensor(layout.k_map, options.device()), map_tensor(layout.v_map, options.device())};
}

bool cuda_kernels_registered() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("dha::grouped_attention", "")
      .hasKernelForDispatchKey(c10::DispatchKey::CUDA);
}

}  // namespace

// ---- CPU: dispatch and the op pair ------------------------------------------

TEST(AttentionOp, SchemasAreRegistered) {
  for (const char* name : {"dha::grouped_attention", "dha::grouped_attention_fwd",
                           "dha::grouped_attention_bwd"}) {
    EXPECT_TRUE(c10::Dispatcher::singleton().findSchema({name, ""}).has_value()) << name;
  }
}

TEST(AttentionOp, CpuDispatchRunsTheReference) {
  torch::manual_seed(3);
  const Layout layout = dha_layout(6, 3, 4, 1);
  const Inputs in = random_inputs(layout, 2, 5, 9, 8, torch::kFloat64);
  const Tensor got = dha::grouped_attention(in.q, in.k, in.v, in.k_map, in.v_map, true);
  const Tensor want = dha::reference::attention(in.q, in.k, in.v, in.k_map, in.v_map, true);
  EXPECT_TRUE(torch::equal(got, want));
  // InferenceMode skips the autograd kernel altogether.
  c10::InferenceMode inference;
  EXPECT_TRUE(torch::equal(dha::grouped_attention(in.q, in.k, in.v, in.k_map, in.v_map, true), want));
}

TEST(AttentionOp, ForwardOpReturnsOutputAndLogSumExp) {
  torch::manual_seed(4);
  for (const bool causal : {false, true}) {
    const Layout layout = dha_layout(5, 2, 3, 2);
    const Inputs in = random_inputs(layout, 2, 4, 11, 8, torch::kFloat64);
    const auto [out, lse] = dha::grouped_attention_forward(in.q, in.k, in.v, in.k_map, in.v_map, causal);
    const Tensor want = dha::reference::attention(in.q, in.k, in.v, in.k_map, in.v_map, causal);
    EXPECT_TRUE(torch::allclose(out, want, 1e-12, 1e-12));
    ASSERT_EQ(lse.sizes(), (std::vector<int64_t>{2, 5, 4}));
    EXPECT_EQ(lse.scalar_type(), torch::kFloat64);
    // lse by hand for one (b, head, t): keys 0 .. T_k - T_q + t when causal.
    const int64_t b = 1, head = 3, t = 1, t_k = 11, t_q = 4;
    const Tensor s = in.k[b][layout.k_map[head]].matmul(in.q[b][head][t]) / std::sqrt(8.0);
    const int64_t n = causal ? t_k - t_q + t + 1 : t_k;
    EXPECT_NEAR(lse[b][head][t].item<double>(), torch::logsumexp(s.narrow(0, 0, n), 0).item<double>(), 1e-12);
  }
}

// Gradients through the op (autograd kernel -> forward op -> backward op) equal
// autograd through the reference math, in float64.
TEST(AttentionOp, BackwardOpEqualsAutogradOfTheReference) {
  torch::manual_seed(5);
  struct Case {
    Layout layout;
    int64_t t_q, t_k;
    bool causal;
  };
  const std::vector<Case> cases = {{mha(4), 7, 7, true},           {gqa(6, 3), 9, 9, true},
                                   {dha_layout(7, 3, 2, 3), 6, 6, true},
                                   {dha_layout(7, 2, 5, 4), 5, 13, true},
                                   {dha_layout(6, 4, 1, 5), 8, 8, false},
                                   {dha_layout(5, 2, 3, 6), 1, 10, true}};
  for (const Case& c : cases) {
    const Inputs in = random_inputs(c.layout, 2, c.t_q, c.t_k, 8, torch::kFloat64);
    const Tensor dout = torch::randn_like(in.q);
    auto grads = [&](bool through_op) {
      const Tensor q = in.q.clone().requires_grad_(), k = in.k.clone().requires_grad_(),
                   v = in.v.clone().requires_grad_();
      const Tensor out = through_op
                             ? dha::grouped_attention(q, k, v, in.k_map, in.v_map, c.causal)
                             : dha::reference::attention(q, k, v, in.k_map, in.v_map, c.causal);
      out.backward(dout);
      return std::vector<Tensor>{out.detach(), q.grad(), k.grad(), v.grad()};
    };
    const auto got = grads(true), want = grads(false);
    const char* names[] = {"out", "dq", "dk", "dv"};
    for (int i = 0; i < 4; ++i) {
      EXPECT_TRUE(torch::allclose(got[i], want[i], 1e-10, 1e-10))
          << c.layout.name << " t_q=" << c.t_q << " t_k=" << c.t_k << " " << names[i]
          << " max diff " << (got[i] - want[i]).abs().max().item<double>();
    }
  }
}

TEST(AttentionOp, GradientsMatchFiniteDifferences) {
  torch::manual_seed(6);
  const Layout layout = dha_layout(3, 2, 2, 7);
  const Inputs in = random_inputs(layout, 1, 3, 5, 4, torch::kFloat64);
  const Tensor w = torch::randn({1, 3, 3, 4}, torch::kFloat64);
  auto loss = [&](const Tensor& q, const Tensor& k, const Tensor& v) {
    return (dha::grouped_attention(q, k, v, in.k_map, in.v_map, true) * w).sum();
  };
  const Tensor q = in.q.clone().requires_grad_(), k = in.k.clone().requires_grad_(),
               v = in.v.clone().requires_grad_();
  loss(q, k, v).backward();
  const double eps = 1e-6;
  const std::vector<Tensor> inputs = {in.q, in.k, in.v};
  const std::vector<Tensor> analytic = {q.grad(), k.grad(), v.grad()};
  torch::NoGradGuard no_grad;
  for (size_t which = 0; which < 3; ++which) {
    const Tensor flat = analytic[which].reshape(-1);
    for (int64_t i = 0; i < inputs[which].numel(); ++i) {
      std::vector<Tensor> plus = {in.q.clone(), in.k.clone(), in.v.clone()};
      std::vector<Tensor> minus = {in.q.clone(), in.k.clone(), in.v.clone()};
      plus[which].view(-1)[i] += eps;
      minus[which].view(-1)[i] -= eps;
      const double numeric = (loss(plus[0], plus[1], plus[2]).item<double>() -
                              loss(minus[0], minus[1], minus[2]).item<double>()) /
                             (2 * eps);
      EXPECT_NEAR(flat[i].item<double>(), numeric, 1e-6 * (1 + std::abs(numeric)))
          << "input " << which << " element " << i;
    }
  }
}

TEST(AttentionOp, KeyAndValueHeadsNobodyReadsGetZeroGradient) {
  torch::manual_seed(8);
  const Layout layout{"partial", {0, 2, 0}, {1, 1, 1}};  // key head 1, value head 0 unread
  const Inputs in = random_inputs(layout, 1, 4, 4, 8, torch::kFloat64);
  const Tensor k = in.k.clone().requires_grad_(), v = in.v.clone().requires_grad_();
  dha::grouped_attention(in.q, k, v, in.k_map, in.v_map, true).sum().backward();
  EXPECT_EQ(k.grad()[0][1].abs().max().item<double>(), 0.0);
  EXPECT_EQ(v.grad()[0][0].abs().max().item<double>(), 0.0);
  EXPECT_GT(k.grad()[0][2].abs().max().item<double>(), 0.0);
}

TEST(AttentionOp, BadArgumentsAreRefusedWithClearMessages) {
  const Layout layout = gqa(4, 2);
  const Inputs in = random_inputs(layout, 1, 3, 3, 8, torch::kFloat32);
  auto expect_error = [](auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { dha::grouped_attention(in.q[0], in.k, in.v, in.k_map, in.v_map, true); },
               "must be [B, heads, T, d_h]");
  expect_error([&] { dha::grouped_attention(in.q, in.k, in.v, in.k_map.narrow(0, 0, 3), in.v_map, true); },
               "one entry per query head (4)");
  expect_error([&] { dha::grouped_attention(in.q, in.k, in.v, map_tensor({0, 1, 2, 1}), in.v_map, true); },
               "k_map has entries in [0, 2] but there are 2 key heads");
  expect_error([&] { dha::grouped_attention(in.q, in.k, in.v, in.k_map, map_tensor({0, -1, 0, 1}), true); },
               "v_map has entries in [-1, 1]");
  expect_error([&] { dha::grouped_attention(in.q, in.k, in.v, in.k_map.to(torch::kFloat32), in.v_map, true); },
               "must be an integer tensor");
  expect_error([&] { dha::grouped_attention(in.q, in.k.to(torch::kFloat64), in.v, in.k_map, in.v_map, true); },
               "need one dtype");
  expect_error([&] { dha::grouped_attention(in.q, in.k.narrow(3, 0, 4), in.v, in.k_map, in.v_map, true); },
               "same head dim");
  expect_error([&] { dha::grouped_attention(torch::randn({1, 4, 5, 8}), in.k, in.v, in.k_map, in.v_map, true); },
               "need T_q <= T_k == T_v");
  expect_error([&] {
    dha::grouped_attention_backward(in.q, in.q, in.k, in.v, in.q, torch::zeros({1, 4}), in.k_map, in.v_map, true);
  }, "lse must be [B, H, T_q]");
}

// Plain ops in low precision on the CPU land within the flash-attention rule's
// bound of themselves: the harness used on the GPU, checked where it runs.
TEST(AttentionOp, CpuReferenceInBf16IsAsAccurateAsItsFloat32Math) {
  torch::manual_seed(9);
  const Layout layout = dha_layout(6, 2, 3, 10);
  const Inputs in = random_inputs(layout, 1, 16, 16, 32, torch::kFloat32);
  const Tensor q = in.q.to(torch::kBFloat16), k = in.k.to(torch::kBFloat16), v = in.v.to(torch::kBFloat16);
  const Tensor ref = dha::reference::attention(q.to(torch::kFloat64), k.to(torch::kFloat64),
                                               v.to(torch::kFloat64), in.k_map, in.v_map, true);
  const Tensor got = std::get<0>(dha::grouped_attention_forward(q, k, v, in.k_map, in.v_map, true));
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  // Computed in float32 and rounded once: within half a bf16 ulp of the truth (2^-9 relative).
  EXPECT_LE((got.to(torch::kFloat64) - ref).abs().max().item<double>(),
            std::ldexp(1.0, -8) * ref.abs().max().item<double>());
}

// ---- host-side launch plan of the kernels -------------------------------------

TEST(AttentionPlan, DecodeSplitsKeysWhenTheBatchCannotFillTheSms) {
  namespace kn = dha::kernels;
  kn::AttentionShape s;
  s.batch = 1;
  s.heads = 32;
  s.k_heads = 8;
  s.v_heads = 12;
  s.t_q = 1;
  s.t_k = 32768;
  s.head_dim = 128;
  const kn::DecodePlan small = kn::plan_decode(s, 132);
  EXPECT_EQ(small.heads_per_block, 32);
  EXPECT_EQ(small.head_blocks, 1);
  // Two CTAs per SM, unless splits would get shorter than kDecodeMinTilesPerSplit tiles.
  const int64_t tiles = s.t_k / kn::kDecodeKeys;
  EXPECT_GE(small.splits, std::min<int64_t>(2 * 132, tiles / kn::kDecodeMinTilesPerSplit));
  EXPECT_EQ(small.splits, 256);
  s.batch = 512;
  const kn::DecodePlan big = kn::plan_decode(s, 132);
  EXPECT_EQ(big.splits, 1);
  EXPECT_EQ(big.keys_per_split, 32768);
}

TEST(AttentionPlan, DecodePlansCoverTheKeysWithNonEmptySplits) {
  namespace kn = dha::kernels;
  std::mt19937 rng(12);
  for (int trial = 0; trial < 2000; ++trial) {
    kn::AttentionShape s;
    s.batch = 1 + rng() % 9;
    s.heads = 1 + rng() % 96;
    s.t_q = 1 + rng() % kn::kDecodeMaxQueries;
    s.t_k = s.t_q + rng() % 20000;
    s.head_dim = rng() % 2 ? 64 : 128;
    const kn::DecodePlan p = kn::plan_decode(s, 1 + rng() % 200);
    ASSERT_LE(p.heads_per_block * s.t_q, kn::kDecodeRows);
    ASSERT_GE(p.heads_per_block * p.head_blocks, s.heads);
    ASSERT_LT((p.head_blocks - 1) * p.heads_per_block, s.heads);
    ASSERT_EQ(p.keys_per_split % kn::kDecodeKeys, 0);
    ASSERT_GE(p.splits * p.keys_per_split, s.t_k);
    ASSERT_LT((p.splits - 1) * p.keys_per_split, s.t_k) << "an empty split";
    ASSERT_EQ(p.workspace_floats, s.batch * s.heads * s.t_q * p.splits * (s.head_dim + 2));
  }
}

TEST(AttentionPlan, KernelChoiceAndWorkspace) {
  namespace kn = dha::kernels;
  EXPECT_TRUE(kn::head_dim_supported(64));
  EXPECT_TRUE(kn::head_dim_supported(128));
  EXPECT_FALSE(kn::head_dim_supported(96));
  kn::AttentionShape s;
  s.batch = 2;
  s.heads = 8;
  s.k_heads = 3;
  s.v_heads = 5;
  s.t_q = 16;
  s.t_k = 100;
  s.head_dim = 64;
  EXPECT_TRUE(kn::use_decode_kernel(s));
  s.t_q = 17;
  EXPECT_FALSE(kn::use_decode_kernel(s));
  EXPECT_EQ(kn::backward_workspace_floats(s), 2 * 8 * 17 * 65 + 2 * 8 * 100 * 64);
}

// ---- CUDA: the kernels against float64 ----------------------------------------

namespace {

bool skip_cuda(std::string* why) {
  if (!torch::cuda::is_available()) {
    *why = "no CUDA device";
    return true;
  }
  if (!cuda_kernels_registered()) {
    *why = "dha CUDA kernels not built (no nvcc, or LibTorch without CUDA)";
    return true;
  }
  return false;
}

#define DHA_SKIP_WITHOUT_CUDA()               \
  do {                                        \
    std::string why;                          \
    if (skip_cuda(&why)) GTEST_SKIP() << why; \
  } while (0)

// flash-attention's attention_ref(upcast=False): the same math with plain ops in
// the inputs' precision.
Tensor plain_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_map,
                       const Tensor& v_map, bool causal) {
  const int64_t t_q = q.size(2), t_k = k.size(2);
  Tensor s = torch::matmul(q, k.index_select(1, k_map).transpose(-2, -1)) /
             std::sqrt(static_cast<double>(q.size(3)));
  if (causal) {
    const Tensor allowed = torch::ones({t_q, t_k}, q.options().dtype(torch::kBool)).tril(t_k - t_q);
    s = s.masked_fill(allowed.logical_not(), -INFINITY);
  }
  return torch::matmul(torch::softmax(s, -1), v.index_select(1, v_map));
}

// err(got) <= 2 err(plain) against the float64 reference; a float32 round-off
// floor covers cases where the plain ops happen to be exact.
void expect_rule(const Tensor& got, const Tensor& plain, const Tensor& ref, const std::string& what) {
  ASSERT_TRUE(torch::isfinite(got).all().item<bool>()) << what << ": non-finite values";
  const Tensor ref64 = ref.to(torch::kFloat64);
  const double err = (got.to(torch::kFloat64) - ref64).abs().max().item<double>();
  const double base = (plain.to(torch::kFloat64) - ref64).abs().max().item<double>();
  const double floor = 1e-6 * (1.0 + ref64.abs().max().item<double>());
  EXPECT_LE(err, std::max(2.0 * base, floor)) << what << ": kernel error " << err
                                              << ", plain ops error " << base;
}

struct GpuCase {
  Layout layout;
  int64_t b, t_q, t_k, d;
  bool causal;
  torch::ScalarType dtype;
  std::string name() const {
    return layout.name + " B=" + std::to_string(b) + " T_q=" + std::to_string(t_q) +
           " T_k=" + std::to_string(t_k) + " d=" + std::to_string(d) +
           (causal ? " causal " : " full ") + (dtype == torch::kBFloat16 ? "bf16" : "fp16");
  }
};

std::vector<GpuCase> gpu_cases(const std::vector<std::pair<int64_t, int64_t>>& lengths) {
  std::vector<GpuCase> cases;
  const std::vector<Layout> layouts = {mha(4), gqa(8, 2), dha_layout(8, 3, 5, 21),
                                       dha_layout(6, 4, 2, 22)};
  for (const auto dtype : {torch::kBFloat16, torch::kHalf})
    for (const int64_t d : {64, 128})
      for (const bool causal : {true, false})
        for (const Layout& layout : layouts)
          for (const auto& [t_q, t_k] : lengths) cases.push_back({layout, 2, t_q, t_k, d, causal, dtype});
  return cases;
}

void check_forward(const GpuCase& c) {
  const auto options = torch::TensorOptions().device(torch::kCUDA).dtype(c.dtype);
  const Inputs in = random_inputs(c.layout, c.b, c.t_q, c.t_k, c.d, options);
  const auto [out, lse] = dha::grouped_attention_forward(in.q, in.k, in.v, in.k_map, in.v_map, c.causal);
  const auto f64 = [](const Tensor& x) { return x.to(torch::kFloat64); };
  const auto [ref, ref_lse] = dha::reference::attention_forward(f64(in.q), f64(in.k), f64(in.v),
                                                                in.k_map, in.v_map, c.causal);
  expect_rule(out, plain_attention(in.q, in.k, in.v, in.k_map, in.v_map, c.causal), ref, c.name() + " out");
  // lse against logsumexp of the scores rounded to the inputs' precision.
  Tensor s = torch::matmul(in.q, in.k.index_select(1, in.k_map).transpose(-2, -1)).to(torch::kFloat32) /
             std::sqrt(static_cast<double>(c.d));
  if (c.causal) {
    s = s.masked_fill(torch::ones({c.t_q, c.t_k}, s.options().dtype(torch::kBool)).tril(c.t_k - c.t_q).logical_not(),
                      -INFINITY);
  }
  expect_rule(lse, torch::logsumexp(s, -1), ref_lse, c.name() + " lse");
  // The plain (no-grad) op runs the same kernels.
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(dha::grouped_attention(in.q, in.k, in.v, in.k_map, in.v_map, c.causal), out))
      << c.name();
}

void check_backward(const GpuCase& c) {
  const auto options = torch::TensorOptions().device(torch::kCUDA).dtype(c.dtype);
  const Inputs in = random_inputs(c.layout, c.b, c.t_q, c.t_k, c.d, options);
  const Tensor dout = torch::randn_like(in.q);
  auto grads = [&](bool kernel) {
    const Tensor q = in.q.clone().requires_grad_(), k = in.k.clone().requires_grad_(),
                 v = in.v.clone().requires_grad_();
    const Tensor out = kernel ? dha::grouped_attention(q, k, v, in.k_map, in.v_map, c.causal)
                              : plain_attention(q, k, v, in.k_map, in.v_map, c.causal);
    out.backward(dout);
    return std::vector<Tensor>{q.grad(), k.grad(), v.grad()};
  };
  const auto got = grads(true), plain = grads(false);
  const auto f64 = [](const Tensor& x) { return x.to(torch::kFloat64); };
  const auto [out64, lse64] = dha::reference::attention_forward(f64(in.q), f64(in.k), f64(in.v),
                                                                in.k_map, in.v_map, c.causal);
  const auto [dq, dk, dv] = dha::reference::attention_backward(
      f64(dout), f64(in.q), f64(in.k), f64(in.v), out64, lse64, in.k_map, in.v_map, c.causal);
  expect_rule(got[0], plain[0], dq, c.name() + " dq");
  expect_rule(got[1], plain[1], dk, c.name() + " dk");
  expect_rule(got[2], plain[2], dv, c.name() + " dv");
}

}  // namespace

TEST(AttentionOpCuda, KernelsAreRegisteredForCuda) {
  DHA_SKIP_WITHOUT_CUDA();
  EXPECT_TRUE(cuda_kernels_registered());
}

TEST(AttentionOpCuda, PrefillForwardWithinTwiceThePlainOpsError) {
  DHA_SKIP_WITHOUT_CUDA();
  torch::manual_seed(31);
  // Multiples of the 64-row tile and not; queries continuing a cache (T_q < T_k).
  for (const GpuCase& c : gpu_cases({{17, 17}, {64, 64}, {101, 101}, {200, 200}, {40, 233}}))
    check_forward(c);
}

TEST(AttentionOpCuda, DecodeForwardWithinTwiceThePlainOpsError) {
  DHA_SKIP_WITHOUT_CUDA();
  torch::manual_seed(32);
  // T_q <= 16 takes the decode kernel; 1000 and 4099 keys are split across CTAs.
  for (const GpuCase& c : gpu_cases({{1, 1}, {1, 77}, {1, 1000}, {3, 64}, {5, 4099}, {16, 300}}))
    check_forward(c);
}

TEST(AttentionOpCuda, BackwardWithinTwiceThePlainOpsError) {
  DHA_SKIP_WITHOUT_CUDA();
  torch::manual_seed(33);
  for (const GpuCase& c : gpu_cases({{3, 70}, {64, 64}, {101, 101}, {40, 233}})) check_backward(c);
}

TEST(AttentionOpCuda, LongSequenceBf16) {
  DHA_SKIP_WITHOUT_CUDA();
  torch::manual_seed(34);
  for (const bool causal : {true, false}) {
    const GpuCase c{dha_layout(8, 2, 3, 35), 1, 1024, 1024, 128, causal, torch::kBFloat16};
    check_forward(c);
    check_backward(c);
    check_forward({c.layout, 1, 1, 16384, 128, causal, torch::kBFloat16});
  }
}

TEST(AttentionOpCuda, StridedInputsAsTheModelPassesThem) {
  DHA_SKIP_WITHOUT_CUDA();
  torch::manual_seed(36);
  const Layout layout = dha_layout(6, 2, 4, 37);
  const auto options = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  for (const int64_t t : {1, 70}) {
    // q as the model makes it: [B, T, H, d] transposed; k, v narrowed out of a cache.
    const Tensor q = torch::randn({2, t, 6, 64}, options).transpose(1, 2);
    const Tensor cache_k = torch::randn({2, 2, 300, 64}, options), cache_v = torch::randn({2, 4, 300, 64}, options);
    const Tensor k = cache_k.narrow(2, 0, 150), v = cache_v.narrow(2, 0, 150);
    const Tensor km = map_tensor(layout.k_map, torch::kCUDA), vm = map_tensor(layout.v_map, torch::kCUDA);
    const Tensor got = dha::grouped_attention(q, k, v, km, vm, true);
    const Tensor same = dha::grouped_attention(q.contiguous(), k.contiguous(), v.contiguous(), km, vm, true);
    EXPECT_TRUE(torch::equal(got, same)) << "T_q=" << t;
  }
}

TEST(AttentionOpCuda, OutOfRangeMapEntryGivesNanForThatHeadOnly) {
  DHA_SKIP_WITHOUT_CUDA();
  torch::manual_seed(38);
  const Layout layout = gqa(4, 2);
  const auto options = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  for (const int64_t t_q : {1, 80}) {
    const Inputs in = random_inputs(layout, 1, t_q, 80, 64, options);
    const Tensor bad_map = map_tensor({0, 0, 7, 1}, torch::kCUDA);  // query head 2 reads key head 7 of 2
    const Tensor out = dha::grouped_attention(in.q, in.k, in.v, bad_map, in.v_map, true);
    EXPECT_TRUE(torch::isnan(out.select(1, 2)).all().item<bool>()) << "T_q=" << t_q;
    EXPECT_TRUE(torch::isfinite(out.select(1, 0)).all().item<bool>()) << "T_q=" << t_q;
  }
}

// A small run of every kernel family for compute-sanitizer (scripts/device_run.sh).
TEST(AttentionOpCuda, SanitizerSmallCase) {
  DHA_SKIP_WITHOUT_CUDA();
  torch::manual_seed(39);
  for (const int64_t d : {64, 128}) {
    check_forward({dha_layout(5, 2, 3, 40), 1, 70, 70, d, true, torch::kBFloat16});
    check_forward({dha_layout(5, 2, 3, 40), 1, 2, 200, d, true, torch::kHalf});
    check_backward({dha_layout(5, 2, 3, 40), 1, 70, 90, d, true, torch::kBFloat16});
  }
  torch::cuda::synchronize();
}
