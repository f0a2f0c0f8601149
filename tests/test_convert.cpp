// dha-convert's invariants (docs/method.md §6): identity operators are the source,
// collapse equals the fusion stage when members agree, key fusion commutes with
// RoPE, alignment keeps the function, budgets are exact, exports reload to the
// same logits, GQA pooling is the hand-computed mean (each also with q/k/v
// biases, which travel with their heads); the Lagrangian on a toy run, search
// determinism, the MHA twin's copies found, and bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "dha/align.h"
#include "dha/convert.h"
#include "dha/error.h"
#include "dha/export.h"
#include "dha/fusion.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "dha/io/llama2c.h"
#include "dha/search.h"
#include "dha/shared_attention.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::TempDir;

namespace {

// Groups over an MHA tiny model (4 heads per pool): unequal, non-contiguous.
dha::Grouping sample_grouping() {
  dha::Grouping g;
  g.push_back({{0, 2}, {1, 3}});       // L0 K
  g.push_back({{0, 1, 3}, {2}});       // L0 V
  g.push_back({{0, 1, 2, 3}});         // L1 K
  g.push_back({{0}, {1, 2}, {3}});     // L1 V
  return g;
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

void expect_close(const torch::Tensor& a, const torch::Tensor& b, double tol = 1e-5) {
  EXPECT_TRUE(torch::allclose(a, b, tol, tol)) << "max abs diff " << (a - b).abs().max().item<double>();
}

}  // namespace

TEST(Fusion, IdentityOperatorsGiveTheSourceModel) {
  for (bool biased : {false, true}) {
    SCOPED_TRACE(biased ? "q/k/v biases" : "no biases");
    const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(false, biased), 2);
    dha::Llama source = dha::make_model(ck, "source");
    dha::FusionTask task(dha::make_model(ck, "fusion"), sample_grouping(), 10, {}, std::nullopt);
    task.before_eval();
    const torch::Tensor tokens = dha::test::random_tokens(2, 11, 61, 3);
    expect_close(logits(task, tokens), logits(source, tokens), 1e-6);
    EXPECT_GT(task.initial_fusion_loss(), 0.1);
    // A head is its weight rows and its bias: d + 1 columns with biases.
    EXPECT_EQ(task.effective_weights().front().size(2), 32 + (biased ? 1 : 0));
  }
}

// Distillation in fusion: the teacher reads the fusion model's frozen weights (no
// second copy) and keeps the checkpoint's values of the weights that train, so it
// stays the starting function while the fusion model trains.
TEST(Fusion, DistillationTeacherSharesFrozenWeightsAndKeepsTheTrainedOnes) {
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 21);
  dha::Llama reference = dha::make_model(ck, "reference");
  for (dha::TrainWeights weights : {dha::TrainWeights::kAll, dha::TrainWeights::kAttention, dha::TrainWeights::kNone}) {
    SCOPED_TRACE(dha::train_weights_name(weights));
    dha::Llama fused =
        dha::make_model_over(ck, "fusion", [&](const std::string& name) { return dha::weight_trains(weights, name); });
    dha::Llama teacher = dha::distillation_teacher(ck, ck, fused, torch::kCPU);
    const auto teacher_params = teacher->named_parameters();
    int64_t shared = 0, own = 0;
    for (const auto& item : fused->named_parameters()) {
      const torch::Tensor& t = teacher_params[item.key()];
      EXPECT_FALSE(t.requires_grad()) << item.key();
      if (item.value().requires_grad()) {
        EXPECT_NE(t.data_ptr(), item.value().data_ptr()) << item.key();
        EXPECT_TRUE(torch::equal(t, ck.tensors.at(item.key()))) << item.key();
        ++own;
      } else {
        EXPECT_EQ(t.data_ptr(), item.value().data_ptr()) << item.key();
        ++shared;
      }
    }
    EXPECT_EQ(own == 0, weights == dha::TrainWeights::kNone);
    EXPECT_EQ(shared == 0, weights == dha::TrainWeights::kAll);
    {
      torch::NoGradGuard no_grad;  // a training step's worth of change to what trains
      for (auto& p : fused->parameters())
        if (p.requires_grad()) p.add_(0.05);
    }
    const torch::Tensor tokens = dha::test::random_tokens(2, 11, 61, 5);
    expect_close(logits(teacher, tokens), logits(reference, tokens), 1e-6);
  }
}

TEST(Fusion, CollapseEqualsTheFusionStageWhenMembersAgree) {
  for (bool per_channel : {false, true})
  for (bool biased : {false, true}) {
    SCOPED_TRACE(std::string(per_channel ? "per channel" : "scalar") + (biased ? ", q/k/v biases" : ""));
    const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(/*tied=*/true, biased), 4);
    dha::FusionOptions options;
    options.per_channel = per_channel;
    dha::FusionTask task(dha::make_model(ck, "fusion"), sample_grouping(), 10, options, std::nullopt);
    {
      torch::NoGradGuard no_grad;
      // Every member's effective weight becomes the group mean: all rows 1/n.
      for (size_t p = 0; p < 4; ++p)
        for (size_t g = 0; g < sample_grouping()[p].size(); ++g) {
          torch::Tensor& omega = task.omega(p, g);
          if (omega.defined()) omega.fill_(1.0 / omega.size(0));
        }
    }
    EXPECT_LT(task.fusion_loss(), 1e-6);  // zero up to float32 cancellation
    task.before_eval();
    const torch::Tensor tokens = dha::test::random_tokens(2, 9, 61, 5);
    const torch::Tensor fused = logits(task, tokens);
    dha::Checkpoint collapsed = task.collapse();
    EXPECT_EQ(collapsed.config.layout.n_k_heads(0), 2);
    EXPECT_EQ(collapsed.config.layout.n_v_heads(1), 3);
    dha::Llama model = dha::make_model(collapsed, "collapsed");
    expect_close(logits(model, tokens), fused, 1e-5);
    if (biased) {  // the collapsed key bias of L0 group {0, 2} is the mean of the members' biases
      const torch::Tensor b = ck.tensors.at("model.layers.0.self_attn.k_proj.bias").view({4, 8});
      expect_close(collapsed.tensors.at("model.layers.0.self_attn.k_proj.bias").view({2, 8})[0], (b[0] + b[2]) / 2);
    }
  }
}

TEST(Fusion, ScalarKeyFusionCommutesWithRope) {
  torch::manual_seed(1);
  const int64_t d_h = 16;
  dha::Rope rope(d_h, 32, 10000.0);
  const torch::Tensor keys = torch::randn({1, 3, 20, d_h}, torch::kFloat64);  // three heads, pre-RoPE
  const torch::Tensor omega = torch::randn({3}, torch::kFloat64);
  const torch::Tensor mixed = (keys * omega.view({1, 3, 1, 1})).sum(1, true);
  const torch::Tensor a = rope->apply(mixed.to(torch::kFloat32), 5).to(torch::kFloat64);
  const torch::Tensor b = (rope->apply(keys.to(torch::kFloat32), 5).to(torch::kFloat64) * omega.view({1, 3, 1, 1})).sum(1, true);
  expect_close(a, b, 1e-5);
}

TEST(Align, AlignmentLeavesTheLogitsUnchanged) {
  for (bool gqa : {false, true})
  for (bool biased : {false, true}) {
    SCOPED_TRACE(std::string(gqa ? "gqa" : "mha") + (biased ? ", q/k/v biases" : ""));
    dha::ModelConfig config = dha::test::tiny_config(false, biased);
    if (gqa) config.layout = dha::HeadLayout::gqa(config.n_layers, config.n_heads, 2);
    const dha::Checkpoint ck = dha::test::random_checkpoint(config, 6);
    dha::Llama source = dha::make_model(ck, "source");
    const torch::Tensor tokens = dha::test::random_tokens(2, 16, 61, 7);  // RoPE at positions 0..15
    const auto acts = dha::collect_activations(source, tokens);
    const dha::Grouping grouping = dha::contiguous_grouping(config, 1);
    const dha::Checkpoint aligned = dha::align_groups(ck, grouping, acts);
    bool changed = false;
    for (const auto& [name, t] : aligned.tensors) changed = changed || !torch::equal(t, ck.tensors.at(name));
    EXPECT_TRUE(changed);
    if (biased)  // the biases turn with their heads (q with the keys' planes, v with R^T)
      for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
        const std::string name = std::string("model.layers.0.self_attn.") + proj + ".bias";
        EXPECT_FALSE(torch::allclose(aligned.tensors.at(name), ck.tensors.at(name))) << name;
      }
    dha::Llama model = dha::make_model(aligned, "aligned");
    expect_close(logits(model, tokens), logits(source, tokens), 1e-4);
  }
}

TEST(Align, AlignedHeadsAreCloserThanBefore) {
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 8);
  dha::Llama source = dha::make_model(ck, "source");
  const torch::Tensor tokens = dha::test::random_tokens(2, 16, 61, 9);
  const dha::Grouping grouping = dha::contiguous_grouping(ck.config, 1);
  const auto acts = dha::collect_activations(source, tokens);
  dha::Llama aligned = dha::make_model(dha::align_groups(ck, grouping, acts), "aligned");
  const auto after = dha::collect_activations(aligned, tokens);
  auto spread = [](const torch::Tensor& a) { return (a - a.mean(0, true)).pow(2).sum().item<double>(); };
  EXPECT_LT(spread(after[0].values), spread(acts[0].values));
  EXPECT_LT(spread(after[1].keys), spread(acts[1].keys));
}

// Align, then fuse (dha-convert's default; --no-align: the paper's recipe): fusion starts from the aligned
// checkpoint, whose function is the source's, with the searched groups'
// heads closer together (a lower fusion loss to close).
TEST(Align, FusionOfAlignedGroupsStartsFromTheSourceFunction) {
  for (bool biased : {false, true}) {
    SCOPED_TRACE(biased ? "q/k/v biases" : "no biases");
    const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(false, biased), 12);
    dha::Llama source = dha::make_model(ck, "source");
    const torch::Tensor tokens = dha::test::random_tokens(2, 16, 61, 13);
    const auto acts = dha::collect_activations(source, tokens);
    dha::FusionTask plain(dha::make_model(ck, "plain"), sample_grouping(), 10, {}, std::nullopt);
    dha::FusionTask aligned(dha::make_model(dha::align_groups(ck, sample_grouping(), acts), "aligned"),
                            sample_grouping(), 10, {}, std::nullopt);
    aligned.before_eval();
    expect_close(logits(aligned, tokens), logits(source, tokens), 1e-4);
    EXPECT_LT(aligned.initial_fusion_loss(), plain.initial_fusion_loss());
  }
}

TEST(Search, BudgetIsExactWithAtLeastOneHeadPerPool) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<torch::Tensor> costs;
    int64_t total = 0;
    for (int p = 0; p < 6; ++p) {
      const int64_t n = 2 + rng() % 6;
      torch::Tensor c = torch::rand({n, n}, torch::kFloat64);
      costs.push_back((c + c.t()) / 2);
      total += n;
    }
    dha::GroupingOptions options;
    options.target_total = 6 + rng() % (total - 6 + 1);
    const dha::Grouping g = dha::group_heads(costs, options);
    int64_t heads = 0;
    for (size_t p = 0; p < g.size(); ++p) {
      EXPECT_GE(g[p].size(), 1u);
      heads += static_cast<int64_t>(g[p].size());
      std::vector<int64_t> members;
      for (const auto& group : g[p]) members.insert(members.end(), group.begin(), group.end());
      std::sort(members.begin(), members.end());
      for (int64_t h = 0; h < costs[p].size(0); ++h) EXPECT_EQ(members[h], h);  // a partition
    }
    EXPECT_EQ(heads, options.target_total);
  }
}

TEST(Search, BudgetLimitsAreClearErrors) {
  const dha::ModelConfig c = dha::test::tiny_config();  // 2 layers x 4 heads: 16 K+V heads, 4 pools
  EXPECT_EQ(dha::budget_heads(c, 0.25), 4);
  EXPECT_THROW(dha::budget_heads(c, 0.0), dha::Error);
  EXPECT_THROW(dha::budget_heads(c, 1.5), dha::Error);
  EXPECT_THROW(dha::budget_heads(c, 0.1), dha::Error);  // 2 heads < 4 pools
  dha::ModelConfig gqa = c;
  gqa.layout = dha::HeadLayout::gqa(2, 4, 2);  // 8 K+V heads
  EXPECT_THROW(dha::budget_heads(gqa, 0.75), dha::Error);
}

TEST(Search, AdaptiveAllocationTakesTheCheapMergesFirst) {
  // Pool 0: two identical pairs (cost 0); pool 1: all far apart.
  torch::Tensor cheap = torch::ones({4, 4}, torch::kFloat64);
  cheap[0][1] = cheap[1][0] = cheap[2][3] = cheap[3][2] = 0.0;
  cheap.fill_diagonal_(0.0);
  torch::Tensor far = torch::full({4, 4}, 0.9, torch::kFloat64).fill_diagonal_(0.0);
  dha::GroupingOptions options;
  options.target_total = 6;
  const dha::Grouping g = dha::group_heads({cheap, far}, options);
  EXPECT_EQ(g[0], (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}}));
  EXPECT_EQ(g[1].size(), 4u);
  options.uniform = true;
  const dha::Grouping u = dha::group_heads({cheap, far}, options);
  EXPECT_EQ(u[0].size(), 3u);
  EXPECT_EQ(u[1].size(), 3u);
  options.uniform = false;
  options.max_group_size = 1;
  EXPECT_THROW(dha::group_heads({cheap, far}, options), dha::Error);
}

// Uniform counts with a budget that does not divide: as even as it allows, and the
// pool that gives up its extra head is the one whose cheapest merge costs least.
TEST(Search, UniformCountsWithAnUnevenBudgetDifferByOneAndTheCheapPoolGivesUp) {
  torch::Tensor cheap = torch::ones({4, 4}, torch::kFloat64);
  cheap[0][1] = cheap[1][0] = 0.1;
  cheap[2][3] = cheap[3][2] = 0.2;
  cheap.fill_diagonal_(0.0);
  const torch::Tensor far = torch::full({4, 4}, 1.5, torch::kFloat64).fill_diagonal_(0.0);
  dha::GroupingOptions options;
  options.uniform = true;
  options.target_total = 5;  // 2 or 3 heads in each of two pools
  const dha::Grouping g = dha::group_heads({far, cheap}, options);
  EXPECT_EQ(g[0].size(), 3u);
  EXPECT_EQ(g[1], (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}}));  // its two cheap merges
  // The adaptive allocation spends every merge on the cheap pool instead.
  options.uniform = false;
  const dha::Grouping a = dha::group_heads({far, cheap}, options);
  EXPECT_EQ(a[0].size(), 4u);
  EXPECT_EQ(a[1].size(), 1u);
}

TEST(Search, WeightCostIsZeroForCopiesAndDeterministic) {
  torch::manual_seed(4);
  torch::Tensor w = torch::randn({4, 8, 32});
  w[2] = w[0] * 3.0;  // a scaled copy: CKA is scale-free
  const torch::Tensor c = dha::weight_cost(w);
  EXPECT_NEAR(c[0][2].item<double>(), 0.0, 1e-12);
  EXPECT_GT(c[0][1].item<double>(), 0.1);
  EXPECT_TRUE(torch::equal(c, dha::weight_cost(w)));
  torch::Tensor a = torch::randn({3, 50, 8});
  a[1] = a[0];
  EXPECT_NEAR(dha::activation_cost(a)[0][1].item<double>(), 0.0, 1e-12);
}

// Heads that are rotations of each other, of the kinds alignment undoes, cost
// nothing after alignment though they are far apart before it; the cost equals
// the residual of the explicit best rotation.
TEST(Search, AlignedActivationCostIsZeroForRotatedCopies) {
  torch::manual_seed(9);
  const int64_t n = 3, tokens = 64, d = 8;
  torch::Tensor a = torch::randn({n, tokens, d}, torch::kFloat64);
  // Values: head 1 is head 0 times a random orthogonal matrix.
  const torch::Tensor q = std::get<0>(torch::linalg_qr(torch::randn({d, d}, torch::kFloat64)));
  torch::Tensor values = a.clone();
  values[1] = a[0].matmul(q);
  const torch::Tensor cv = dha::aligned_activation_cost(values, false);
  EXPECT_NEAR(cv[0][1].item<double>(), 0.0, 1e-10);
  EXPECT_GT(dha::activation_cost(values)[0][1].item<double>(), 0.1);
  // The cost is the residual of the Procrustes rotation of head 0 onto head 2.
  const auto [u, sv, vh] = torch::linalg_svd(values[0].t().matmul(values[2]), false);
  const double residual = (values[0].matmul(u.matmul(vh)) - values[2]).pow(2).sum().item<double>();
  const double norms = values[0].pow(2).sum().item<double>() + values[2].pow(2).sum().item<double>();
  EXPECT_NEAR(cv[0][2].item<double>(), residual / norms, 1e-10);
  // Keys: head 1 is head 0 turned by one angle per RoPE plane (j, j + d/2).
  const torch::Tensor angles = torch::rand({d / 2}, torch::kFloat64) * 6.0;
  torch::Tensor keys = a.clone();
  const torch::Tensor x = a[0].narrow(1, 0, d / 2), y = a[0].narrow(1, d / 2, d / 2);
  keys[1] = torch::cat({angles.cos() * x - angles.sin() * y, angles.sin() * x + angles.cos() * y}, 1);
  const torch::Tensor ck = dha::aligned_activation_cost(keys, true);
  EXPECT_NEAR(ck[0][1].item<double>(), 0.0, 1e-10);
  // A full rotation is not a plane rotation: the keys' cost of the values' copy stays.
  EXPECT_GT(dha::aligned_activation_cost(values, true)[0][1].item<double>(), 0.05);
  for (const torch::Tensor& c : {cv, ck}) EXPECT_TRUE(torch::allclose(c, c.t(), 0, 1e-12));
  // Never above the unaligned cost (the identity is one of the rotations).
  EXPECT_TRUE((dha::aligned_activation_cost(a, false) <= dha::activation_cost(a) + 1e-12).all().item<bool>());
  EXPECT_TRUE((dha::aligned_activation_cost(a, true) <= dha::activation_cost(a) + 1e-12).all().item<bool>());
}

TEST(Search, MhaTwinOfStories260kPairsTheCopiesAtHalfBudget) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  const dha::Checkpoint gqa = dha::io::load_llama2c(dha::test::shared_path("models/stories260K/stories260K.bin"));
  const dha::Checkpoint twin = dha::relayout_heads(gqa, dha::HeadRelayout::kMha);
  std::vector<torch::Tensor> costs;
  for (const auto& p : dha::all_pools(twin.config.n_layers)) costs.push_back(dha::weight_cost(dha::pool_weights(twin, p)));
  dha::GroupingOptions options;
  options.target_total = dha::budget_heads(twin.config, 0.5);
  const dha::Grouping g = dha::group_heads(costs, options);
  for (const auto& pool : g) EXPECT_EQ(pool, (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  // Collapsing those groups gives back the original GQA model exactly.
  const dha::Checkpoint back = dha::collapse_groups(twin, g);
  for (const auto& [name, t] : gqa.tensors) EXPECT_TRUE(torch::allclose(back.tensors.at(name), t, 0, 1e-7)) << name;
}

TEST(Baselines, GqaMeanPoolingEqualsHandComputedPooling) {
  for (bool biased : {false, true}) {
    const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(false, biased), 10);
    const dha::Checkpoint pooled = dha::collapse_groups(ck, dha::contiguous_grouping(ck.config, 2));
    EXPECT_EQ(pooled.config.layout.uniform_gqa_kv_heads(), 2);
    for (const char* proj : {"k_proj", "v_proj"})
      for (const char* kind : {".weight", ".bias"}) {
        if (!biased && std::string(kind) == ".bias") continue;
        const std::string name = std::string("model.layers.1.self_attn.") + proj + kind;
        const torch::Tensor w = ck.tensors.at(name);  // rows: heads 0..3 of 8 rows each
        const torch::Tensor hand = torch::cat({(w.narrow(0, 0, 8) + w.narrow(0, 8, 8)) / 2,
                                               (w.narrow(0, 16, 8) + w.narrow(0, 24, 8)) / 2});
        EXPECT_TRUE(torch::allclose(pooled.tensors.at(name), hand, 0, 1e-7)) << name;
      }
    if (biased) {
      EXPECT_TRUE(torch::equal(pooled.tensors.at("model.layers.1.self_attn.q_proj.bias"),
                               ck.tensors.at("model.layers.1.self_attn.q_proj.bias")));
    }
    EXPECT_THROW(dha::contiguous_grouping(ck.config, 3), dha::Error);
  }
}

// Every format of the list, for a decoupled layout and for plain MHA, each with
// and without q/k/v biases: written, read back by load_checkpoint, the same
// logits; or, where the format cannot hold the layout (or the biases), one
// clear error that says what to export instead.
TEST(Export, EveryFormatReloadsToTheSameLogitsOrRefusesTheLayout) {
  TempDir tmp;
  for (const bool decoupled : {true, false})
  for (const bool biased : {false, true}) {
    const dha::Checkpoint ck = dha::test::random_checkpoint(
        decoupled ? dha::test::tiny_dha_config(false, biased) : dha::test::tiny_config(false, biased), 12);
    dha::Llama original = dha::make_model(ck, "source");
    const torch::Tensor tokens = dha::test::random_tokens(2, 10, 61, 13);
    const torch::Tensor want = logits(original, tokens);
    for (const auto& format : dha::export_formats()) {
      SCOPED_TRACE(format.name + (decoupled ? " (decoupled)" : " (mha)") + (biased ? " with biases" : ""));
      const std::string path = tmp.file(format.name + (decoupled ? "-dha" : "-mha") + (biased ? "-bias" : ""));
      const bool holds = !decoupled || format.relayout != dha::HeadRelayout::kKeep || format.name == "dha";
      auto write = [&] {
        const dha::Checkpoint exported = dha::export_checkpoint(ck, format);
        if (format.single_file) {
          format.write(path, exported, {});
        } else {
          dha::io::StagedDirectory staged(path, false);
          format.write(staged.path(), exported, {});
          staged.commit();
        }
        return exported;
      };
      if (!holds) {
        dha::test::expect_one_line_error(write, "holds only MHA/GQA");
        EXPECT_FALSE(fs::exists(path));
        continue;
      }
      if (biased && !format.holds_biases) {
        dha::test::expect_one_line_error(write, "biases");
        EXPECT_FALSE(fs::exists(path));
        continue;
      }
      const dha::Checkpoint exported = write();
      if (format.relayout == dha::HeadRelayout::kMha) {
        EXPECT_EQ(exported.config.layout.uniform_gqa_kv_heads(), 4);
      }
      if (format.relayout == dha::HeadRelayout::kPerLayerGqa) {
        for (int64_t l = 0; l < 2; ++l) EXPECT_EQ(exported.config.layout.k_map[l], exported.config.layout.v_map[l]);
      }
      dha::Llama reloaded = dha::make_model(dha::io::load_checkpoint(path), path);
      expect_close(logits(reloaded, tokens), want, 1e-5);
    }
  }
}

TEST(Export, FormatNamesAreUniqueAndAnUnknownOneListsThemAll) {
  std::set<std::string> names;
  for (const auto& format : dha::export_formats()) {
    EXPECT_TRUE(names.insert(format.name).second) << format.name;
    EXPECT_EQ(&dha::find_export_format(format.name), &format);
    EXPECT_NE(dha::export_formats_help().find(format.name + ": "), std::string::npos) << format.name;
  }
  try {
    dha::find_export_format("onnx", "--format");
    ADD_FAILURE() << "no error";
  } catch (const dha::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("--format \"onnx\" is not one of"), std::string::npos) << message;
    for (const auto& name : names) EXPECT_NE(message.find(name), std::string::npos) << name;
  }
}

TEST(Fusion, LagrangianRaisesLambdaWhileViolatedAndMeetsTheTarget) {
  const dha::ModelConfig config = dha::test::tiny_config();
  const dha::Checkpoint ck = dha::test::random_checkpoint(config, 14);
  torch::manual_seed(15);
  const torch::Tensor random = torch::randint(3, 61, {3000}, torch::kInt32);
  dha::TokenDataset data(std::vector<int32_t>(random.data_ptr<int32_t>(), random.data_ptr<int32_t>() + 3000), 61, "toy");
  dha::SequenceSampler sampler(data, 16, 1);
  const int64_t steps = 80;
  dha::FusionOptions options;
  options.target_fraction = 0.25;
  options.omega_lr = 2e-2;
  options.lambda_lr = 0.5;
  dha::FusionTask task(dha::make_model(ck, "toy"), sample_grouping(), steps, options, std::nullopt);
  dha::TrainConfig tc;
  tc.steps = steps;
  tc.micro_batch = 4;
  tc.seq_len = 16;
  tc.lr = 1e-3;
  tc.warmup = 0;
  tc.min_lr_ratio = 1.0;
  tc.device = "cpu";
  auto dist = dha::Distributed::join(dha::RankEnvironment::from_env(), torch::kCPU, std::chrono::seconds(30));
  TempDir tmp;
  dha::TrainRun run;
  run.out_dir = tmp.path();
  run.show_progress = false;
  dha::train(task, sampler, tc, *dist, run);
  const auto& records = task.records();
  ASSERT_EQ(records.size(), static_cast<size_t>(steps));
  // While L_F is above the target, lambda1 climbs.
  int violated = 0, rises = 0;
  for (size_t i = 1; i < records.size(); ++i)
    if (records[i].fusion_loss > records[i].target + 1e-6) {
      violated += 1;
      rises += records[i].lambda1 > records[i - 1].lambda1;
    }
  EXPECT_GT(violated, 5);
  EXPECT_EQ(rises, violated);
  EXPECT_DOUBLE_EQ(records.back().target, 0.0);
  EXPECT_LT(task.fusion_loss(), 0.02 * task.initial_fusion_loss()) << "initial " << task.initial_fusion_loss();
}

// dha-convert end to end on a small random model with stories260K's tokenizer.
class ConvertCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(dha::test::shared_path("models/stories260K/tok512.bin"))) GTEST_SKIP() << "../shared is absent";
    dha::test::save_tiny_model_with_tokenizer(tmp_.file("model"));
    dha::io::write_file_atomic(tmp_.file("calib.txt"), dha::test::tiny_calibration_text());
  }
  std::string args(const std::string& out, const std::string& extra = "", const std::string& budget = "0.5") const {
    return "dha-convert --model " + tmp_.file("model") + " --calib " + tmp_.file("calib.txt") + " --out " + out +
           " --budget " + budget + " --search-steps 4 --search-average 2 --fusion-steps 4 --batch 2 --seq-len 16 --device cpu " +
           extra;
  }
  TempDir tmp_;
};

TEST_F(ConvertCli, WritesTheModelReportAndPicturesDeterministically) {
  ASSERT_EQ(dha::test::run_tool(args(tmp_.file("a")), true).code, 0);
  ASSERT_EQ(dha::test::run_tool(args(tmp_.file("b")), true).code, 0);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.bin", "recipe.json", "report.json",
                           "head_similarity.svg", "head_allocation.svg", "fusion_loss.svg", "fusion_lambda.svg"})
    EXPECT_TRUE(fs::exists(tmp_.file("a/") + file)) << file;
  const auto a = nlohmann::json::parse(dha::io::read_file(tmp_.file("a/report.json")));
  const auto b = nlohmann::json::parse(dha::io::read_file(tmp_.file("b/report.json")));
  EXPECT_EQ(a["search"]["groups"], b["search"]["groups"]);  // same seed, same search
  EXPECT_EQ(a["layout"], b["layout"]);
  EXPECT_EQ(a["kv_bytes_per_token"]["after"], 8 * 8 * 2);  // budget 0.5 of 16 heads x d_h 8 x 2 bytes
  EXPECT_LT(a["export"]["max_abs_logit_diff"].get<double>(), 1e-4);
  // Every token the conversion read is counted: steps x batch x seq_len per trained stage, and the one
  // batch whose activations align each group's heads before fusion.
  EXPECT_EQ(a["tokens"]["search"], 4 * 2 * 16);
  EXPECT_EQ(a["tokens"]["alignment"], 2 * 16);
  EXPECT_EQ(a["tokens"]["fusion"], 4 * 2 * 16);
  EXPECT_EQ(a["tokens"]["total"], 2 * 4 * 2 * 16 + 2 * 16);
  const dha::Checkpoint model = dha::io::load_hf_dir(tmp_.file("a"));
  EXPECT_DOUBLE_EQ(model.config.head_budget(), 0.5);
}

// Each baseline and ablation runs, and its report says it did what was asked.
TEST_F(ConvertCli, BaselinesAndAblationsDoWhatTheyAsk) {
  using nlohmann::json;
  auto heads = [](const json& layout, const char* kind) {
    std::vector<int64_t> out;
    for (const auto& layer : layout) out.push_back(layer[kind].get<int64_t>());
    return out;
  };
  auto total = [&](const json& layout) {
    int64_t sum = 0;
    for (const char* kind : {"k_heads", "v_heads"})
      for (int64_t h : heads(layout, kind)) sum += h;
    return sum;
  };
  auto stages = [](const json& report) {
    std::set<std::string> out;
    for (const auto& s : report["stages"]) out.insert(s["stage"].get<std::string>());
    return out;
  };
  const std::vector<int64_t> two = {2, 2}, four = {4, 4};
  struct Case {
    std::string extra;
    std::function<void(const json&)> check;
  };
  const std::vector<Case> cases = {
      {"--method gqa",
       [&](const json& r) {  // the same count in every pool, pooled without training
         EXPECT_EQ(heads(r["layout"], "k_heads"), two);
         EXPECT_EQ(heads(r["layout"], "v_heads"), two);
         EXPECT_FALSE(r.contains("after_fusion"));
         EXPECT_TRUE(stages(r).count("mean pooling"));
       }},
      {"--method aligned-gqa",
       [&](const json& r) {
         EXPECT_EQ(heads(r["layout"], "k_heads"), two);
         EXPECT_EQ(heads(r["layout"], "v_heads"), two);
         EXPECT_FALSE(r.contains("after_fusion"));
         EXPECT_TRUE(stages(r).count("align and merge"));
       }},
      {"",
       [&](const json& r) {  // the default: searched and fused, with equal counts
         EXPECT_EQ(r["aligned_before_fusion"], true);
         EXPECT_EQ(heads(r["layout"], "k_heads"), two);
         EXPECT_EQ(heads(r["layout"], "v_heads"), two);
         EXPECT_TRUE(r.contains("after_fusion"));
         EXPECT_FALSE(r["fusion"]["groups"].empty());
       }},
      {"--no-align",
       [&](const json& r) {  // the paper's recipe: the searched groups fused as they are
         EXPECT_TRUE(r.contains("after_fusion"));
         EXPECT_EQ(r["aligned_before_fusion"], false);
       }},
      {"--no-fusion",
       [&](const json& r) {  // searched groups, mean-pooled: no fusion stage at all
         EXPECT_FALSE(r.contains("after_fusion"));
         EXPECT_TRUE(r["fusion"].empty());
         EXPECT_TRUE(stages(r).count("mean pooling"));
         EXPECT_FALSE(stages(r).count("fusion"));
       }},
      {"--measure weight --export mha",
       [&](const json& r) {  // written expanded: every query head has its own K and V
         EXPECT_EQ(r["export"]["format"], "mha");
         EXPECT_EQ(heads(r["export"]["layout"], "k_heads"), four);
         EXPECT_EQ(heads(r["export"]["layout"], "v_heads"), four);
         EXPECT_FALSE(r["search"].contains("fusion_measure_final_loss"));
         // a plain HF LLaMA directory, which transformers loads as it is
         const auto config = json::parse(dha::io::read_file(r["_dir"].get<std::string>() + "/config.json"));
         EXPECT_EQ(config["model_type"], "llama");
         EXPECT_FALSE(config.contains("dha"));
       }},
      {"--measure activation --export gqa --rounds 2",
       [&](const json& r) {  // K and V on one partition per layer
         EXPECT_EQ(r["export"]["format"], "gqa");
         for (const auto& layer : r["export"]["layout"]) EXPECT_EQ(layer["k_map"], layer["v_map"]);
         EXPECT_FALSE(r["search"].contains("fusion_measure_final_loss"));
       }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.extra);
    const auto run = dha::test::run_tool(args(tmp_.file("x"), c.extra + " --force"), true);
    ASSERT_EQ(run.code, 0) << run.out;
    json report = json::parse(dha::io::read_file(tmp_.file("x/report.json")));
    // An MHA source: H K and V heads in every layer before, the budget's 8 of 16 after.
    EXPECT_EQ(heads(report["source_layout"], "k_heads"), four);
    EXPECT_EQ(heads(report["source_layout"], "v_heads"), four);
    EXPECT_EQ(total(report["layout"]), 8);
    EXPECT_EQ(report["kv_bytes_per_token"]["before"], 16 * 8 * 2);
    EXPECT_EQ(report["kv_bytes_per_token"]["after"], 8 * 8 * 2);
    EXPECT_LT(report["export"]["max_abs_logit_diff"].get<double>(), 1e-4);
    report["_dir"] = tmp_.file("x");
    c.check(report);
  }
}

TEST_F(ConvertCli, BadInputFailsBeforeAnyWorkAndLeavesNoDirectory) {
  auto expect_error = [&](const std::string& command, const std::string& text) {
    dha::test::expect_one_error_line(command, text);
    EXPECT_FALSE(fs::exists(tmp_.file("bad")));
  };
  expect_error(args(tmp_.file("bad"), "", "0"), "must be in (0, 1]");
  expect_error(args(tmp_.file("bad"), "", "1.2"), "must be in (0, 1]");
  expect_error(args(tmp_.file("bad"), "", "0.1"), "below one head per pool");
  std::string no_calib = args(tmp_.file("bad"));
  no_calib.replace(no_calib.find("--calib " + tmp_.file("calib.txt")), 9 + tmp_.file("calib.txt").size(), "");
  expect_error(no_calib, "no calibration text");
  dha::io::write_file_atomic(tmp_.file("empty.txt"), "");
  std::string empty = args(tmp_.file("bad"));
  empty.replace(empty.find(tmp_.file("calib.txt")), tmp_.file("calib.txt").size(), tmp_.file("empty.txt"));
  expect_error(empty, "calibration file is empty");
  if (fs::exists(dha::test::shared_path("models/llama2-tokenizer/tokenizer.model")))
    expect_error(args(tmp_.file("bad"), "--tokenizer " + dha::test::shared_path("models/llama2-tokenizer/tokenizer.model")),
                 "but the model's vocab is 512");
  expect_error(args(tmp_.file("bad"), "--method gqa", "0.375"), "not a whole number");
  expect_error(args(tmp_.file("bad"), "--method gqa", "0.75"), "cannot split equally");
  fs::create_directories(tmp_.file("exists"));
  const auto r = dha::test::run_tool(args(tmp_.file("exists")), true);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("already exists (pass --force"), std::string::npos) << r.out;
}

TEST(Configs, ShippedRecipesParse) {
  const std::string dir = std::string(DHA_SOURCE_DIR) + "/configs/";
  for (const char* name : {"convert-dha.json", "convert-dha-paper.json", "convert-gqa.json"})
    EXPECT_NO_THROW(dha::convert_options_from_json(nlohmann::json::parse(dha::io::read_file(dir + name)), name)) << name;
  // The paper's recipe differs from the default in alignment, distillation and head counts only.
  dha::ConvertOptions paper = dha::convert_options_from_json(
      nlohmann::json::parse(dha::io::read_file(dir + "convert-dha-paper.json")), "paper");
  EXPECT_FALSE(paper.align);
  EXPECT_EQ(paper.distill_weight, 0.0);
  EXPECT_TRUE(paper.adaptive);
  paper.align = true;
  paper.distill_weight = dha::ConvertOptions{}.distill_weight;
  paper.adaptive = false;
  EXPECT_EQ(dha::convert_options_to_json(paper), dha::convert_options_to_json(dha::ConvertOptions{}));
  EXPECT_NO_THROW(dha::train_config_from_json(nlohmann::json::parse(dha::io::read_file(dir + "train-continue.json")), "t"));
  const dha::ModelConfig c =
      dha::model_config_from_json(nlohmann::json::parse(dha::io::read_file(dir + "model-small-mha.json")), 4096, "m");
  EXPECT_EQ(c.layout.uniform_gqa_kv_heads(), 8);
  // The defaults written out in convert-dha.json are the built-in ones.
  EXPECT_EQ(dha::convert_options_to_json(
                dha::convert_options_from_json(nlohmann::json::parse(dha::io::read_file(dir + "convert-dha.json")), "c")),
            dha::convert_options_to_json(dha::ConvertOptions{}));
}

// From an aligned start (the same function, other tensors) or one with shared
// spans (another function), the teacher is still the source: it follows the
// start only where that holds nothing beside the fusion model and the source.
TEST(Fusion, DistillationTeacherIsTheSourceFromAnAlignedOrSharedStart) {
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 23);
  dha::Llama reference = dha::make_model(ck, "reference");
  const torch::Tensor tokens = dha::test::random_tokens(2, 11, 61, 7);
  dha::Llama source = dha::make_model_over(ck, "source");
  const dha::Checkpoint aligned = dha::align_groups(ck, sample_grouping(), source, tokens);
  const dha::Checkpoint shared = dha::share_attention(ck, {{1, 1}});
  for (const dha::Checkpoint* start : {&aligned, &shared})
    for (dha::TrainWeights weights : {dha::TrainWeights::kAll, dha::TrainWeights::kAttention, dha::TrainWeights::kNone}) {
      SCOPED_TRACE(std::string(start == &aligned ? "aligned" : "shared spans") + ", " + dha::train_weights_name(weights));
      dha::Llama fused = dha::make_model_over(
          *start, "fusion", [&](const std::string& name) { return dha::weight_trains(weights, name); });
      dha::Llama teacher = dha::distillation_teacher(ck, *start, fused, torch::kCPU);
      EXPECT_EQ(teacher->config().layout, ck.config.layout);
      const auto fused_params = fused->named_parameters();
      for (const auto& item : teacher->named_parameters()) {
        const void* data = item.value().data_ptr();
        const torch::Tensor* in_fusion = fused_params.find(item.key());
        // Every tensor the teacher reads is the source's own or a frozen one of the fusion model.
        const bool source_own = data == ck.tensors.at(item.key()).data_ptr();
        const bool fusion_frozen = in_fusion && !in_fusion->requires_grad() && data == in_fusion->data_ptr();
        EXPECT_TRUE(source_own || fusion_frozen) << item.key();
      }
      {
        torch::NoGradGuard no_grad;
        for (auto& p : fused->parameters())
          if (p.requires_grad()) p.add_(0.05);
      }
      expect_close(logits(teacher, tokens), logits(reference, tokens), 1e-4);
    }
}

TEST(Fusion, CheckpointStateRoundTrips) {
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 16);
  dha::FusionTask a(dha::make_model(ck, "a"), sample_grouping(), 10, {}, std::nullopt);
  {
    torch::NoGradGuard no_grad;
    a.omega(0, 0).add_(0.1);
    a.omega(3, 1).mul_(0.5);
  }
  dha::FusionTask b(dha::make_model(dha::test::random_checkpoint(dha::test::tiny_config(), 17), "b"), sample_grouping(),
                    10, {}, std::nullopt);
  b.load_state(a.state(), "a");
  const auto wa = a.effective_weights(), wb = b.effective_weights();
  for (size_t p = 0; p < wa.size(); ++p) EXPECT_TRUE(torch::equal(wa[p], wb[p])) << p;
  dha::TensorMap missing = a.state();
  missing.erase("fusion.omega.L1V.1");
  EXPECT_THROW(b.load_state(missing, "a"), dha::Error);
}
