// dha-convert --layout per-layer-gqa: equal-size partitions (exact against a
// brute-force reference, the local search on planted groups), the allocation
// across layers (exact budget, optimal against every combination), the plan's
// refusals and its nearest-below budget, the fusion invariants on such a
// grouping, and the gqa / gguf exports keeping the converted KV bytes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "dha/convert.h"
#include "dha/error.h"
#include "dha/export.h"
#include "dha/fusion.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "dha/search.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::expect_one_line_error;
using dha::test::TempDir;
using Groups = std::vector<std::vector<int64_t>>;

namespace {

torch::Tensor random_cost(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  torch::Tensor c = torch::zeros({n, n}, torch::kFloat64);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) c[i][j] = c[j][i] = u(rng);
  return c;
}

// The reference cost of a partition, written out: sum_g (|g| - 1) * mean pairwise cost in g.
double reference_cost(const torch::Tensor& cost, const Groups& groups) {
  const torch::Tensor c = cost.contiguous();
  const auto acc = c.accessor<double, 2>();
  double total = 0.0;
  for (const auto& g : groups) {
    if (g.size() < 2) continue;
    double sum = 0.0;
    int pairs = 0;
    for (size_t a = 0; a < g.size(); ++a)
      for (size_t b = a + 1; b < g.size(); ++b) sum += acc[g[a]][g[b]], ++pairs;
    total += static_cast<double>(g.size() - 1) * sum / pairs;
  }
  return total;
}

// Brute force: every labelling of n heads with G labels, kept when the labels
// are equally used (G^n labellings: small n only; G = 1 and G = n are direct).
double brute_force_best(const torch::Tensor& c, int64_t n_groups) {
  const int64_t n = c.size(0), s = n / n_groups;
  if (n_groups == n) return 0.0;
  std::vector<int64_t> label(n, 0);
  if (n_groups == 1) return reference_cost(c, {[&] { std::vector<int64_t> all(n); std::iota(all.begin(), all.end(), 0); return all; }()});
  double best = std::numeric_limits<double>::infinity();
  while (true) {
    std::vector<int64_t> count(n_groups, 0);
    for (int64_t l : label) count[l] += 1;
    if (std::all_of(count.begin(), count.end(), [&](int64_t k) { return k == s; })) {
      Groups groups(n_groups);
      for (int64_t h = 0; h < n; ++h) groups[label[h]].push_back(h);
      best = std::min(best, reference_cost(c, groups));
    }
    int64_t i = 0;
    while (i < n && ++label[i] == n_groups) label[i++] = 0;
    if (i == n) break;
  }
  return best;
}

// Every head once, in groups of one size.
void expect_equal_partition(const Groups& groups, int64_t n, int64_t n_groups) {
  ASSERT_EQ(static_cast<int64_t>(groups.size()), n_groups);
  std::vector<int64_t> all;
  for (const auto& g : groups) {
    EXPECT_EQ(static_cast<int64_t>(g.size()), n / n_groups);
    all.insert(all.end(), g.begin(), g.end());
  }
  std::sort(all.begin(), all.end());
  for (int64_t h = 0; h < n; ++h) EXPECT_EQ(all.at(h), h);
}

// n heads in planted groups of s (cost 0.05-0.1 inside, 0.8-1 across), shuffled.
torch::Tensor planted_cost(int64_t n, int64_t s, std::mt19937& rng, std::vector<int64_t>& cluster) {
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  cluster.assign(n, 0);
  for (int64_t i = 0; i < n; ++i) cluster[perm[i]] = i / s;
  std::uniform_real_distribution<double> inside(0.05, 0.1), across(0.8, 1.0);
  torch::Tensor c = torch::zeros({n, n}, torch::kFloat64);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) c[i][j] = c[j][i] = cluster[i] == cluster[j] ? inside(rng) : across(rng);
  return c;
}

dha::ModelConfig demo_like_config() {  // demo-mha's attention shape: 6 layers of 8 heads
  dha::ModelConfig c = dha::test::tiny_config();
  c.n_layers = 6;
  c.n_heads = 8;
  c.head_dim = 4;
  c.layout = dha::HeadLayout::mha(6, 8);
  return c;
}

torch::Tensor logits(dha::Llama& model, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  model->eval();
  return model->forward(tokens);
}

// The fusion model as its task runs it: with the effective K/V weights of its last before_eval().
torch::Tensor logits(dha::FusionTask& task, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  dha::Llama& model = task.model();
  model->eval();
  return model->forward(tokens, task.forward_options());
}

// A per-layer GQA layout: in every layer k_map == v_map, each KV head read by H / H_K query heads.
void expect_per_layer_gqa(const dha::ModelConfig& c) {
  for (int64_t l = 0; l < c.n_layers; ++l) {
    EXPECT_EQ(c.layout.k_map[l], c.layout.v_map[l]) << "layer " << l;
    EXPECT_NO_THROW(dha::per_layer_gqa_pool_sizes(c, "result")) << dha::describe_layout(c);
  }
}

}  // namespace

TEST(EqualPartition, CostIsHeadsRemovedTimesMeanLinkage) {
  torch::Tensor c = torch::zeros({4, 4}, torch::kFloat64);
  const double v[4][4] = {{0, 0.1, 0.4, 0.7}, {0.1, 0, 0.5, 0.2}, {0.4, 0.5, 0, 0.3}, {0.7, 0.2, 0.3, 0}};
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) c[i][j] = v[i][j];
  EXPECT_NEAR(dha::equal_partition_cost(c, {{0, 1}, {2, 3}}), 0.1 + 0.3, 1e-12);
  // One group of 4: 3 heads removed at the mean of its 6 pair costs.
  EXPECT_NEAR(dha::equal_partition_cost(c, {{0, 1, 2, 3}}), 3 * (0.1 + 0.4 + 0.7 + 0.5 + 0.2 + 0.3) / 6, 1e-12);
  EXPECT_NEAR(dha::equal_partition_cost(c, {{0}, {1}, {2}, {3}}), 0.0, 1e-12);
  const dha::EqualPartition best = dha::equal_partition(c, 2);
  EXPECT_EQ(best.groups, (Groups{{0, 1}, {2, 3}}));
  EXPECT_TRUE(best.exact);
  expect_one_line_error([&] { dha::equal_partition(c, 3); }, "3 groups cannot split 4 heads equally");
}

TEST(EqualPartition, ExactSearchMatchesBruteForce) {
  std::mt19937 rng(11);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{4, 2}, {6, 2}, {6, 3}, {8, 2}, {8, 4}, {9, 3}};
  for (const auto& [n, g] : shapes)
    for (int trial = 0; trial < 3; ++trial) {
      SCOPED_TRACE(std::to_string(n) + " heads into " + std::to_string(g) + " groups, trial " + std::to_string(trial));
      const torch::Tensor c = random_cost(n, rng);
      const dha::EqualPartition p = dha::equal_partition(c, g);
      EXPECT_TRUE(p.exact);
      expect_equal_partition(p.groups, n, g);
      EXPECT_NEAR(p.cost, reference_cost(c, p.groups), 1e-12);
      EXPECT_NEAR(p.cost, brute_force_best(c, g), 1e-12);
    }
}

TEST(EqualPartition, LocalSearchFindsPlantedGroupsAndNoImprovingSwapRemains) {
  std::mt19937 rng(5);
  for (const auto& [n, s] : std::vector<std::pair<int64_t, int64_t>>{{32, 4}, {32, 2}, {24, 3}, {16, 8}}) {
    SCOPED_TRACE(std::to_string(n) + " heads in groups of " + std::to_string(s));
    std::vector<int64_t> cluster;
    const torch::Tensor c = planted_cost(n, s, rng, cluster);
    const dha::EqualPartition p = dha::equal_partition(c, n / s, /*max_exact=*/0);
    EXPECT_FALSE(p.exact);
    expect_equal_partition(p.groups, n, n / s);
    for (const auto& g : p.groups)
      for (int64_t h : g) EXPECT_EQ(cluster[h], cluster[g[0]]) << "head " << h << " left its planted group";
  }
  // On random costs: a valid partition that no swap of two heads improves.
  for (int trial = 0; trial < 4; ++trial) {
    const torch::Tensor c = random_cost(12, rng);
    const dha::EqualPartition p = dha::equal_partition(c, 3, /*max_exact=*/0);
    expect_equal_partition(p.groups, 12, 3);
    for (size_t g1 = 0; g1 < p.groups.size(); ++g1)
      for (size_t g2 = g1 + 1; g2 < p.groups.size(); ++g2)
        for (size_t a = 0; a < 4; ++a)
          for (size_t b = 0; b < 4; ++b) {
            Groups swapped = p.groups;
            std::swap(swapped[g1][a], swapped[g2][b]);
            EXPECT_GE(reference_cost(c, swapped), p.cost - 1e-12);
          }
    // And never better than the proven optimum.
    EXPECT_GE(p.cost, dha::equal_partition(c, 3).cost - 1e-12);
  }
}

TEST(PerLayerGqa, ReachableTotalsAreTheNearestBelowAmongDivisorSums) {
  const std::vector<int64_t> sizes = {8, 8, 8, 8, 8, 8};
  // Every sum of divisors of 8 over 6 layers, enumerated directly.
  std::set<int64_t> sums = {0};
  for (size_t l = 0; l < sizes.size(); ++l) {
    std::set<int64_t> next;
    for (int64_t s : sums)
      for (int64_t g : {1, 2, 4, 8}) next.insert(s + g);
    sums = next;
  }
  dha::GroupingOptions options;
  for (int64_t target = 12; target <= 96; ++target) {
    int64_t want = -1;
    for (int64_t s : sums)
      if (2 * s <= target) want = std::max(want, 2 * s);
    EXPECT_EQ(dha::per_layer_gqa_reachable_heads(sizes, target, options), want) << target;
  }
  EXPECT_EQ(dha::per_layer_gqa_reachable_heads(sizes, 24, options), 24);  // the demo at budget 0.25
  EXPECT_EQ(dha::per_layer_gqa_reachable_heads(sizes, 93, options), 88);  // 2 x (8 x 5 + 4): no G sum of 45 or 46
  expect_one_line_error([&] { dha::per_layer_gqa_reachable_heads(sizes, 11, options); },
                        {"no choice of equal groups", "one group per layer: 12 heads"});
  options.uniform = true;
  EXPECT_EQ(dha::per_layer_gqa_reachable_heads(sizes, 40, options), 24);  // 2 x 6 x G, G in {1, 2, 4, 8}
  options.uniform = false;
  options.max_group_size = 2;  // G in {4, 8}
  EXPECT_EQ(dha::per_layer_gqa_reachable_heads(sizes, 50, options), 48);
  expect_one_line_error([&] { dha::per_layer_gqa_reachable_heads(sizes, 47, options); }, "--max-group-size 2");
  EXPECT_EQ(dha::equal_group_counts(12, 0), (std::vector<int64_t>{1, 2, 3, 4, 6, 12}));
  EXPECT_EQ(dha::equal_group_counts(12, 3), (std::vector<int64_t>{4, 6, 12}));
}

TEST(PerLayerGqa, BudgetIsExactKAndVShareEqualGroupsAndTheAllocationIsOptimal) {
  std::mt19937 rng(7);
  const std::vector<int64_t> sizes = {8, 6, 4, 8};
  std::vector<torch::Tensor> costs;
  for (int64_t n : sizes) {
    costs.push_back(random_cost(n, rng));
    costs.push_back(random_cost(n, rng));
  }
  // Each layer's best partition cost at each count, by brute force.
  std::vector<std::map<int64_t, double>> layer_best(sizes.size());
  for (size_t l = 0; l < sizes.size(); ++l)
    for (int64_t n_groups : dha::equal_group_counts(sizes[l], 0))
      layer_best[l][n_groups] = brute_force_best(costs[2 * l] + costs[2 * l + 1], n_groups);
  dha::GroupingOptions probe;
  int64_t checked = 0;
  for (int64_t target = 8; target <= 52; target += 2) {
    if (dha::per_layer_gqa_reachable_heads(sizes, target, probe) != target) {
      dha::GroupingOptions o;
      o.target_total = target;
      expect_one_line_error([&] { dha::group_heads_per_layer_gqa(costs, o); },
                            {"cannot keep exactly " + std::to_string(target), "the nearest below is"});
      continue;
    }
    SCOPED_TRACE("target " + std::to_string(target));
    dha::GroupingOptions o;
    o.target_total = target;
    const dha::Grouping g = dha::group_heads_per_layer_gqa(costs, o);
    ASSERT_EQ(g.size(), 2 * sizes.size());
    int64_t total = 0;
    double cost = 0.0;
    for (size_t l = 0; l < sizes.size(); ++l) {
      EXPECT_EQ(g[2 * l], g[2 * l + 1]);  // K and V: one partition
      const int64_t n_groups = static_cast<int64_t>(g[2 * l].size());
      EXPECT_EQ(sizes[l] % n_groups, 0);
      expect_equal_partition(g[2 * l], sizes[l], n_groups);
      total += 2 * n_groups;
      cost += reference_cost(costs[2 * l] + costs[2 * l + 1], g[2 * l]);
    }
    EXPECT_EQ(total, target);
    // Optimal: no other choice of counts (each at its best partition, brute force) is cheaper.
    double best = std::numeric_limits<double>::infinity();
    std::function<void(size_t, int64_t, double)> enumerate = [&](size_t l, int64_t sum, double so_far) {
      if (l == sizes.size()) {
        if (2 * sum == target) best = std::min(best, so_far);
        return;
      }
      for (const auto& [n_groups, c] : layer_best[l]) enumerate(l + 1, sum + n_groups, so_far + c);
    };
    enumerate(0, 0, 0.0);
    EXPECT_NEAR(cost, best, 1e-9);
    ++checked;
  }
  EXPECT_GT(checked, 15);
}

TEST(PerLayerGqa, CheapLayersGiveUpHeadsFirstAndUniformKeepsOneCount) {
  // Layer 0: two planted pairs of copies (cost 0); layer 1: every pair far apart.
  torch::Tensor cheap = torch::ones({4, 4}, torch::kFloat64);
  cheap[0][2] = cheap[2][0] = cheap[1][3] = cheap[3][1] = 0.0;
  cheap.fill_diagonal_(0.0);
  const torch::Tensor far = torch::full({4, 4}, 0.9, torch::kFloat64).fill_diagonal_(0.0);
  dha::GroupingOptions o;
  o.target_total = 12;  // 6 groups over 2 layers of 4 heads: {2, 4}
  const dha::Grouping g = dha::group_heads_per_layer_gqa({cheap, cheap, far, far}, o);
  EXPECT_EQ(g[0], (Groups{{0, 2}, {1, 3}}));
  EXPECT_EQ(g[2].size(), 4u);
  o.uniform = true;
  o.target_total = 8;
  const dha::Grouping u = dha::group_heads_per_layer_gqa({cheap, cheap, far, far}, o);
  EXPECT_EQ(u[0], (Groups{{0, 2}, {1, 3}}));
  EXPECT_EQ(u[2].size(), 2u);
  o.uniform = false;
  o.target_total = 10;  // {1, 4} or {4, 1}: no {2, 3}
  o.max_group_size = 2;
  expect_one_line_error([&] { dha::group_heads_per_layer_gqa({cheap, cheap, far, far}, o); }, "--max-group-size 2");
  expect_one_line_error([&] { dha::group_heads_per_layer_gqa({cheap, far.narrow(0, 0, 3).narrow(1, 0, 3)}, o); },
                        "K and V must be the same heads");
}

TEST(PerLayerGqa, SourcesWithoutEqualSharedKvGroupsAreRefused) {
  EXPECT_EQ(dha::per_layer_gqa_pool_sizes(dha::test::tiny_config(), "m"), (std::vector<int64_t>{4, 4}));
  dha::ModelConfig gqa = dha::test::tiny_config();
  gqa.layout = dha::HeadLayout::gqa(2, 4, 2);
  EXPECT_EQ(dha::per_layer_gqa_pool_sizes(gqa, "m"), (std::vector<int64_t>{2, 2}));
  expect_one_line_error([&] { dha::per_layer_gqa_pool_sizes(dha::test::tiny_dha_config(), "m.dir"); },
                        {"m.dir: layer 0 has K and V on different partitions"});
  dha::ModelConfig unequal = dha::test::tiny_config();
  unequal.layout.k_map[1] = unequal.layout.v_map[1] = {0, 0, 0, 1};
  expect_one_line_error([&] { dha::per_layer_gqa_pool_sizes(unequal, "m.dir"); },
                        {"m.dir: layer 1 KV head 0 is read by 3 query heads"});
}

TEST(PerLayerGqa, PlanRefusesWhatItCannotDoAndStatesTheNearestBudget) {
  const dha::ModelConfig demo = demo_like_config();
  auto plan = [&](const std::function<void(dha::ConvertOptions&)>& edit, const dha::ModelConfig& c) {
    dha::ConvertOptions o;
    o.layout = "per-layer-gqa";
    edit(o);
    return dha::plan_conversion(o, c, "model");
  };
  const dha::ConvertPlan exact = plan([](dha::ConvertOptions& o) { o.budget = 0.25; }, demo);
  EXPECT_TRUE(exact.per_layer_gqa);
  EXPECT_EQ(exact.target_heads, 24);
  EXPECT_EQ(exact.requested_heads, 24);
  EXPECT_TRUE(exact.budget_note.empty());
  // 0.97 of 96 heads is 93: equal groups reach 88 at most below it.
  const dha::ConvertPlan below = plan([](dha::ConvertOptions& o) { o.budget = 0.97; }, demo);
  EXPECT_EQ(below.requested_heads, 93);
  EXPECT_EQ(below.target_heads, 88);
  EXPECT_NE(below.budget_note.find("asks for 93 K+V heads"), std::string::npos) << below.budget_note;
  EXPECT_NE(below.budget_note.find("nearest below, 88 (budget 0.9167)"), std::string::npos) << below.budget_note;
  EXPECT_EQ(std::count(below.budget_note.begin(), below.budget_note.end(), '\n'), 0);
  // The dha layout reaches 93 exactly.
  dha::ConvertOptions dha_layout;
  dha_layout.budget = 0.97;
  EXPECT_EQ(dha::plan_conversion(dha_layout, demo, "model").target_heads, 93);

  const dha::ModelConfig tiny = dha::test::tiny_config();
  expect_one_line_error([&] { plan([](dha::ConvertOptions& o) { o.layout = "gqa"; }, tiny); },
                        {"--layout \"gqa\" is not one of dha, per-layer-gqa"});
  expect_one_line_error([&] { plan([](dha::ConvertOptions& o) { o.method = "gqa"; }, tiny); },
                        {"--layout per-layer-gqa applies to --method dha"});
  expect_one_line_error([&] { plan([](dha::ConvertOptions& o) { o.share_spans = "1"; }, tiny); },
                        {"--share-spans removes keys"});
  expect_one_line_error([&] { plan([](dha::ConvertOptions& o) { o.rounds = 2; }, tiny); }, {"--rounds 1"});
  expect_one_line_error([&] { plan([](dha::ConvertOptions&) {}, dha::test::tiny_dha_config()); },
                        {"model: layer 0 has K and V on different partitions"});
  expect_one_line_error(
      [&] {
        plan([](dha::ConvertOptions& o) {
          o.max_group_size = 2;
          o.budget = 0.4;  // 6 of 16 heads: groups of at most 2 leave at least 2 per pool, 8 in all
        }, tiny);
      },
      {"no choice of equal groups", "--max-group-size 2"});
  // One count in every layer (the library's uniform option) says so in its refusal.
  dha::GroupingOptions one_count;
  one_count.uniform = true;
  one_count.max_group_size = 2;
  expect_one_line_error([&] { dha::per_layer_gqa_reachable_heads({4, 4}, 6, one_count); },
                        {"no choice of equal groups", "same count in every layer", "--max-group-size 2"});
}

// Fusion and collapse run unchanged on a per-layer GQA grouping: identity
// operators are the source, the collapse equals the fusion stage when members
// agree, and the collapsed model is per-layer GQA, which the gqa and gguf
// exports hold at the same KV bytes and the same logits.
TEST(PerLayerGqa, FusionInvariantsHoldAndExportsKeepTheKvBytes) {
  TempDir tmp;
  for (const bool gqa_source : {false, true}) {
    SCOPED_TRACE(gqa_source ? "GQA source" : "MHA source");
    dha::ModelConfig config = demo_like_config();
    config.n_layers = 3;
    config.layout = gqa_source ? dha::HeadLayout::gqa(3, 8, 4) : dha::HeadLayout::mha(3, 8);
    const dha::Checkpoint ck = dha::test::random_checkpoint(config, 31);
    std::mt19937 rng(gqa_source ? 2 : 1);
    std::vector<torch::Tensor> costs;
    for (const auto& p : dha::all_pools(config.n_layers)) {
      (void)p;
      costs.push_back(random_cost(gqa_source ? 4 : 8, rng));
    }
    dha::GroupingOptions o;
    o.target_total = gqa_source ? 12 : 14;  // MHA: e.g. {4, 2, 1}; GQA: sum 6 of {1, 2, 4}
    const dha::Grouping grouping = dha::group_heads_per_layer_gqa(costs, o);
    const torch::Tensor tokens = dha::test::random_tokens(2, 11, config.vocab_size, 3);

    dha::Llama source = dha::make_model(ck, "source");
    dha::FusionTask identity(dha::make_model(ck, "fusion"), grouping, 10, {}, std::nullopt);
    identity.before_eval();
    EXPECT_TRUE(torch::allclose(logits(identity, tokens), logits(source, tokens), 1e-6, 1e-6));

    dha::FusionTask task(dha::make_model(ck, "fusion"), grouping, 10, {}, std::nullopt);
    {
      torch::NoGradGuard no_grad;
      for (size_t p = 0; p < grouping.size(); ++p)
        for (size_t g = 0; g < grouping[p].size(); ++g) {
          torch::Tensor& omega = task.omega(p, g);
          if (omega.defined()) omega.fill_(1.0 / omega.size(0));
        }
    }
    EXPECT_LT(task.fusion_loss(), 1e-6);
    task.before_eval();
    const torch::Tensor fused = logits(task, tokens);
    const dha::Checkpoint collapsed = task.collapse();
    expect_per_layer_gqa(collapsed.config);
    EXPECT_EQ(collapsed.config.layout.kv_heads(), o.target_total);
    dha::Llama collapsed_model = dha::make_model(collapsed, "collapsed");
    const torch::Tensor want = logits(collapsed_model, tokens);
    EXPECT_TRUE(torch::allclose(want, fused, 1e-5, 1e-5)) << (want - fused).abs().max().item<double>();

    for (const char* name : {"gqa", "gguf"}) {
      SCOPED_TRACE(name);
      const dha::ExportFormat& format = dha::find_export_format(name);
      const dha::Checkpoint exported = dha::export_checkpoint(collapsed, format);
      EXPECT_EQ(exported.config.kv_bytes_per_token(2), collapsed.config.kv_bytes_per_token(2));
      const std::string path = tmp.file(std::string(name) + (gqa_source ? "-gqa" : "-mha"));
      if (format.single_file) {
        format.write(path, exported, {});
      } else {
        dha::io::StagedDirectory staged(path, false);
        format.write(staged.path(), exported, {});
        staged.commit();
      }
      const dha::Checkpoint back = dha::io::load_checkpoint(path);
      EXPECT_EQ(back.config.kv_bytes_per_token(2), collapsed.config.kv_bytes_per_token(2));
      dha::Llama reloaded = dha::make_model(back, path);
      EXPECT_TRUE(torch::allclose(logits(reloaded, tokens), want, 1e-5, 1e-5));
    }
  }
}

// dha-convert --layout per-layer-gqa end to end on a small random model, then
// dha-export --format gqa and gguf of the result.
TEST(PerLayerGqaCli, ConvertsAndExportsWithoutLosingKvBytes) {
  DHA_REQUIRE_SHARED("models/stories260K/tok512.bin");
  TempDir tmp;
  dha::test::save_tiny_model_with_tokenizer(tmp.file("model"));
  dha::io::write_file_atomic(tmp.file("calib.txt"), dha::test::tiny_calibration_text());
  auto convert = [&](const std::string& out, const std::string& budget) {
    return dha::test::run_tool("dha-convert --model " + tmp.file("model") + " --calib " + tmp.file("calib.txt") +
                                   " --out " + out + " --budget " + budget +
                                   " --layout per-layer-gqa --search-steps 4 --fusion-steps 4 --batch 2 --seq-len 16"
                                   " --device cpu",
                               false);
  };
  // 0.375 of 16 heads: 6, reachable as {2, 1} or {1, 2} groups.
  const auto run = convert(tmp.file("a"), "0.375");
  ASSERT_EQ(run.code, 0) << run.out;
  EXPECT_EQ(run.out.find("budget    "), std::string::npos) << run.out;
  const auto report = nlohmann::json::parse(dha::io::read_file(tmp.file("a/report.json")));
  EXPECT_EQ(report["kv_bytes_per_token"]["after"], 6 * 8 * 2);
  EXPECT_EQ(report["recipe"]["layout"], "per-layer-gqa");
  EXPECT_FALSE(report.contains("budget_note"));
  for (const auto& layer : report["layout"]) EXPECT_EQ(layer["k_map"], layer["v_map"]);
  const dha::ModelConfig converted = dha::io::load_model_config(tmp.file("a"));
  expect_per_layer_gqa(converted);
  for (const auto& [format, out] : std::vector<std::pair<std::string, std::string>>{{"gqa", "a-gqa"}, {"gguf", "a.gguf"}}) {
    const auto exported = dha::test::run_tool(
        "dha-export --model " + tmp.file("a") + " --format " + format + " --dtype f32 --out " + tmp.file(out), false);
    ASSERT_EQ(exported.code, 0) << exported.out;
    EXPECT_EQ(dha::io::load_model_config(tmp.file(out)).kv_bytes_per_token(2), converted.kv_bytes_per_token(2))
        << format;
  }
  // 0.875 of 16 heads is 14; equal groups reach 12 below it (2 and 4 groups): said on stdout and in the report.
  const auto near = convert(tmp.file("b"), "0.875");
  ASSERT_EQ(near.code, 0) << near.out;
  EXPECT_NE(near.out.find("asks for 14 K+V heads"), std::string::npos) << near.out;
  const auto note = nlohmann::json::parse(dha::io::read_file(tmp.file("b/report.json")));
  EXPECT_EQ(note["requested_heads"], 14);
  EXPECT_EQ(note["target_heads"], 12);
  EXPECT_EQ(note["kv_bytes_per_token"]["after"], 12 * 8 * 2);
}
