// grouped_attention against attention written out with basic tensor ops:
// MHA (identity maps), GQA (repeated K/V) and random unequal DHA layouts.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <random>

#include "dha/attention.h"

namespace {

// softmax(q k^T / sqrt(d) + mask) v for one head, queries at the end of the keys.
torch::Tensor one_head(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal) {
  const int64_t t_q = q.size(0), t_k = k.size(0);
  torch::Tensor scores = q.matmul(k.t()) / std::sqrt(static_cast<double>(q.size(1)));
  if (causal) {
    for (int64_t i = 0; i < t_q; ++i)
      for (int64_t j = 0; j < t_k; ++j)
        if (j > t_k - t_q + i) scores[i][j] = -std::numeric_limits<double>::infinity();
  }
  return torch::softmax(scores, -1).matmul(v);
}

// An explicit loop over batch and query heads, each reading its maps' K and V heads.
torch::Tensor per_head_loop(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const std::vector<int64_t>& k_map, const std::vector<int64_t>& v_map,
                            bool causal) {
  torch::Tensor out = torch::zeros_like(q);
  for (int64_t b = 0; b < q.size(0); ++b)
    for (int64_t h = 0; h < q.size(1); ++h)
      out[b][h] = one_head(q[b][h], k[b][k_map[h]], v[b][v_map[h]], causal);
  return out;
}

torch::Tensor map_tensor(const std::vector<int64_t>& map) { return torch::tensor(map, torch::kInt64); }

struct Shapes {
  int64_t b = 2, h = 6, t_q = 7, t_k = 7, d = 16;
};

void expect_matches_loop(const Shapes& s, const std::vector<int64_t>& k_map,
                         const std::vector<int64_t>& v_map, bool causal) {
  torch::manual_seed(7);
  const int64_t h_k = *std::max_element(k_map.begin(), k_map.end()) + 1;
  const int64_t h_v = *std::max_element(v_map.begin(), v_map.end()) + 1;
  const auto f64 = torch::kFloat64;
  const torch::Tensor q = torch::randn({s.b, s.h, s.t_q, s.d}, f64);
  const torch::Tensor k = torch::randn({s.b, h_k, s.t_k, s.d}, f64);
  const torch::Tensor v = torch::randn({s.b, h_v, s.t_k, s.d}, f64);
  const torch::Tensor got = dha::grouped_attention(q, k, v, map_tensor(k_map), map_tensor(v_map), causal);
  const torch::Tensor want = per_head_loop(q, k, v, k_map, v_map, causal);
  EXPECT_TRUE(torch::allclose(got, want, 1e-10, 1e-10))
      << "max abs diff " << (got - want).abs().max().item<double>();
}

}  // namespace

TEST(GroupedAttention, IdentityMapsEqualPlainMultiHeadAttention) {
  torch::manual_seed(1);
  const int64_t b = 2, h = 4, t = 9, d = 8;
  const torch::Tensor q = torch::randn({b, h, t, d}, torch::kFloat64);
  const torch::Tensor k = torch::randn({b, h, t, d}, torch::kFloat64);
  const torch::Tensor v = torch::randn({b, h, t, d}, torch::kFloat64);
  const torch::Tensor identity = torch::arange(h, torch::kInt64);
  // Plain MHA with basic ops, all heads at once.
  const torch::Tensor mask = torch::ones({t, t}, torch::kBool).tril();
  const torch::Tensor scores =
      q.matmul(k.transpose(-2, -1)).div(std::sqrt(static_cast<double>(d))).masked_fill(~mask, -INFINITY);
  const torch::Tensor want = torch::softmax(scores, -1).matmul(v);
  const torch::Tensor got = dha::grouped_attention(q, k, v, identity, identity, /*causal=*/true);
  EXPECT_TRUE(torch::allclose(got, want, 1e-10, 1e-10));
}

TEST(GroupedAttention, UniformContiguousMapsEqualGqaWithRepeatedKv) {
  torch::manual_seed(2);
  const int64_t b = 3, h = 8, g = 2, t = 11, d = 8;
  const torch::Tensor q = torch::randn({b, h, t, d}, torch::kFloat64);
  const torch::Tensor k = torch::randn({b, g, t, d}, torch::kFloat64);
  const torch::Tensor v = torch::randn({b, g, t, d}, torch::kFloat64);
  const torch::Tensor map = torch::arange(h, torch::kInt64).div(h / g, "floor");
  const torch::Tensor want = at::scaled_dot_product_attention(
      q, k.repeat_interleave(h / g, 1), v.repeat_interleave(h / g, 1), {}, 0.0, true);
  const torch::Tensor got = dha::grouped_attention(q, k, v, map, map, /*causal=*/true);
  EXPECT_TRUE(torch::allclose(got, want, 1e-10, 1e-10));
}

TEST(GroupedAttention, RandomUnequalDecoupledLayoutEqualsPerHeadLoop) {
  // Unequal, non-contiguous groups, different for K and V.
  expect_matches_loop({}, {2, 0, 2, 1, 0, 2}, {0, 0, 1, 0, 0, 0}, /*causal=*/true);
  expect_matches_loop({}, {2, 0, 2, 1, 0, 2}, {3, 1, 0, 2, 4, 1}, /*causal=*/false);
}

TEST(GroupedAttention, RandomLayoutsAgainstLoopManySeeds) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    Shapes s;
    s.h = 2 + rng() % 7;
    s.t_k = 1 + rng() % 13;
    s.t_q = 1 + rng() % s.t_k;
    auto random_onto = [&](int64_t heads) {
      const int64_t groups = 1 + rng() % heads;
      std::vector<int64_t> map(heads);
      for (int64_t i = 0; i < heads; ++i) map[i] = i < groups ? i : rng() % groups;
      std::shuffle(map.begin(), map.end(), rng);
      return map;
    };
    expect_matches_loop(s, random_onto(s.h), random_onto(s.h), /*causal=*/trial % 2 == 0);
  }
}

TEST(GroupedAttention, QueriesContinuingACacheSeeTheirPrefix) {
  // T_q < T_k: bottom-right aligned causal mask, as in decoding with a KV cache.
  Shapes s;
  s.t_q = 3;
  s.t_k = 10;
  expect_matches_loop(s, {0, 1, 1, 0, 2, 2}, {1, 1, 0, 0, 0, 1}, /*causal=*/true);
  s.t_q = 1;
  expect_matches_loop(s, {0, 1, 1, 0, 2, 2}, {1, 1, 0, 0, 0, 1}, /*causal=*/true);
}
