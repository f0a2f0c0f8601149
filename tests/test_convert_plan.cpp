// The conversion plan (every decision and refusal made from the options and the
// source config, with no model loaded) and the table of search measures.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "dha/convert.h"
#include "dha/error.h"
#include "dha/export.h"
#include "dha/fusion.h"
#include "dha/search.h"
#include "dha/search_measures.h"
#include "dha/shared_attention.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

using dha::ConvertOptions;
using dha::test::expect_one_line_error;

ConvertOptions options(const std::string& method = "dha", double budget = 0.5) {
  ConvertOptions o;
  o.method = method;
  o.budget = budget;
  return o;
}

dha::ConvertPlan plan(const ConvertOptions& o, const dha::ModelConfig& c = dha::test::tiny_config()) {
  return dha::plan_conversion(o, c, "model");
}

}  // namespace

TEST(ConvertPlan, DhaAtHalfBudgetSearchesFusesAndKeepsHalfTheHeads) {
  const dha::ConvertPlan p = plan(options());
  EXPECT_EQ(p.method_name(), "dha");
  EXPECT_EQ(p.target_heads, 8);  // 0.5 of 2 layers x 2 kinds x 4 heads
  EXPECT_TRUE(p.fusion_stage);
  EXPECT_TRUE(p.shares_heads);
  EXPECT_TRUE(p.uses_budget);
  EXPECT_FALSE(p.measure_similarity);
  EXPECT_EQ(p.measure->name, "fusion");
  EXPECT_EQ(p.export_format->name, "dha");
  EXPECT_EQ(p.seq_len, dha::test::tiny_config().max_seq_len);  // 256 capped at the context
}

TEST(ConvertPlan, AblationsAndBaselinesChangeOnlyWhatTheySay) {
  ConvertOptions no_fusion = options();
  no_fusion.fusion = false;
  EXPECT_FALSE(plan(no_fusion).fusion_stage);
  ConvertOptions zero_steps = options();
  zero_steps.fusion_steps = 0;
  EXPECT_FALSE(plan(zero_steps).fusion_stage);
  for (const char* method : {"gqa", "aligned-gqa"}) {
    const dha::ConvertPlan p = plan(options(method));
    EXPECT_FALSE(p.fusion_stage) << method;
    EXPECT_EQ(p.target_heads, 8) << method;
  }
}

TEST(ConvertPlan, AttentionAnalysisAndSharedAttentionNeedNoHeadBudget) {
  ConvertOptions analyze = options();
  analyze.analyze_attention = true;
  const dha::ConvertPlan a = plan(analyze);
  EXPECT_TRUE(a.analyze_only);
  EXPECT_TRUE(a.measure_similarity);
  EXPECT_FALSE(a.uses_budget);
  EXPECT_FALSE(a.shares_heads);

  ConvertOptions given = options("shared-attention");
  given.share_spans = "1";
  const dha::ConvertPlan g = plan(given);
  EXPECT_FALSE(g.uses_budget);
  EXPECT_FALSE(g.choose_spans);
  EXPECT_EQ(g.target_heads, 0);
  EXPECT_EQ(g.spans, (std::vector<dha::LayerSpan>{{1, 1}}));
  EXPECT_TRUE(g.shared.layout.shares_attention(1));

  const dha::ConvertPlan chosen = plan(options("shared-attention", 0.8));
  EXPECT_TRUE(chosen.uses_budget);
  EXPECT_TRUE(chosen.choose_spans);

  ConvertOptions combined = options("dha", 0.4);
  combined.share_spans = "1";
  const dha::ConvertPlan c = plan(combined);
  EXPECT_TRUE(c.shares_heads);
  EXPECT_EQ(dha::pools_with_heads(c.shared), 3);  // layer 1's keys are gone
}

TEST(ConvertPlan, EveryRefusalIsDecidedWithoutAModel) {
  struct Case {
    std::string what;
    ConvertOptions o;
    std::vector<std::string> needles;
  };
  std::vector<Case> cases;
  auto add = [&](const std::string& what, const std::function<void(ConvertOptions&)>& edit,
                 std::vector<std::string> needles) {
    ConvertOptions o = options();
    edit(o);
    cases.push_back({what, o, needles});
  };
  std::vector<std::string> methods = {"--method \"mqa\" is not one of"};
  for (const auto& m : dha::convert_methods()) methods.push_back(m.name);
  add("unknown method", [](ConvertOptions& o) { o.method = "mqa"; }, methods);
  std::vector<std::string> measures = {"--measure \"cosine\" is not one of"};
  for (const auto& m : dha::search_measures()) measures.push_back(m.name);
  add("unknown measure", [](ConvertOptions& o) { o.measure = "cosine"; }, measures);
  add("unknown export", [](ConvertOptions& o) { o.export_format = "onnx"; }, {"--export \"onnx\" is not one of"});
  add("a file format", [](ConvertOptions& o) { o.export_format = "llama2c"; },
      {"writes a single file", "dha-export --format llama2c"});
  add("budget 0", [](ConvertOptions& o) { o.budget = 0; }, {"--budget 0 must be in (0, 1]"});
  add("budget above 1", [](ConvertOptions& o) { o.budget = 1.5; }, {"must be in (0, 1]"});
  add("budget below a head per pool", [](ConvertOptions& o) { o.budget = 0.1; }, {"below one head per pool"});
  add("gqa, uneven budget", [](ConvertOptions& o) {
        o.method = "gqa";
        o.budget = 0.375;
      }, {"not a whole number"});
  add("gqa, no divisor", [](ConvertOptions& o) {
        o.method = "gqa";
        o.budget = 0.75;
      }, {"cannot split equally"});
  add("spans with aligned-gqa", [](ConvertOptions& o) {
        o.method = "aligned-gqa";
        o.share_spans = "1";
      },
      {"not aligned-gqa"});
  add("spans exported as gqa", [](ConvertOptions& o) {
        o.share_spans = "1";
        o.export_format = "gqa";
      },
      {"only be written in the dha format"});
  add("span at layer 0", [](ConvertOptions& o) {
        o.method = "shared-attention";
        o.share_spans = "0";
      }, {"layer 0"});
  add("shared attention out of reach", [](ConvertOptions& o) {
        o.method = "shared-attention";
        o.budget = 0.5;
      },
      {"--budget 0.5 cannot be reached by sharing attention alone"});
  add("no batch", [](ConvertOptions& o) { o.batch = 0; }, {"must be positive"});
  add("negative fusion steps", [](ConvertOptions& o) { o.fusion_steps = -1; }, {"fusion steps not negative"});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    for (const auto& needle : c.needles) expect_one_line_error([&] { plan(c.o); }, needle);
  }
}

TEST(ConvertPlan, ASourceThatSharesAttentionOnlyGoesToTheDhaFormat) {
  dha::ModelConfig shared = dha::test::tiny_config();
  shared.layout = dha::with_shared_spans(shared.layout, {{1, 1}});
  expect_one_line_error([&] { dha::plan_conversion(options("aligned-gqa"), shared, "m.dir"); },
                        {"m.dir: layers share attention", "aligned-gqa needs every layer's queries and keys"});
  ConvertOptions mha = options("dha", 0.4);
  mha.export_format = "mha";
  expect_one_line_error([&] { dha::plan_conversion(mha, shared, "m.dir"); }, "only the dha format can hold");
  EXPECT_EQ(dha::plan_conversion(options("dha", 0.4), shared, "m.dir").target_heads, 6);
}

// ---- the search measures ----------------------------------------------------------

TEST(SearchMeasures, NamesAreUniqueAndTheHelpListsEach) {
  std::set<std::string> names;
  for (const auto& m : dha::search_measures()) {
    EXPECT_TRUE(names.insert(m.name).second) << m.name;
    EXPECT_EQ(&dha::find_search_measure(m.name), &m);
    EXPECT_NE(dha::search_measures_help().find(m.name + ": "), std::string::npos) << m.name;
    EXPECT_FALSE(m.help.empty()) << m.name;
  }
  EXPECT_TRUE(names.count(ConvertOptions{}.measure)) << "the default measure is in the table";
}

// Every measure, on a model whose head 1 is an exact copy of head 0 in every
// pool (with its bias, in the biased model): one symmetric, non-negative
// [n, n] cost per pool with a zero diagonal, and the copies are the cheapest
// pair of their pool.
TEST(SearchMeasures, EveryMeasureFindsExactCopiesCheapest) {
  for (bool biased : {false, true}) {
    SCOPED_TRACE(biased ? "q/k/v biases" : "no biases");
    dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(false, biased), 21);
    const auto& c = ck.config;
    for (int64_t l = 0; l < c.n_layers; ++l)
      for (const char* proj : {"k_proj", "v_proj"})
        for (const char* kind : {".weight", ".bias"}) {
          if (!biased && std::string(kind) == ".bias") continue;
          torch::Tensor& w = ck.tensors.at("model.layers." + std::to_string(l) + ".self_attn." + proj + kind);
          w = w.clone();
          w.narrow(0, c.head_dim, c.head_dim).copy_(w.narrow(0, 0, c.head_dim));
        }
    std::vector<int32_t> tokens(4000);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7919 + i / 3) % c.vocab_size);
    dha::TokenDataset data(std::move(tokens), c.vocab_size, "test tokens");
    dha::SequenceSampler sampler(data, 16, 3);
    auto dist = dha::Distributed::join(dha::RankEnvironment::from_env(), torch::kCPU, std::chrono::seconds(30));
    dha::test::TempDir tmp;
    ConvertOptions o;
    o.batch = 2;
    o.search_steps = 6;
    o.device = "cpu";
    for (const auto& measure : dha::search_measures()) {
      SCOPED_TRACE(measure.name);
      nlohmann::json report = nlohmann::json::object();
      const dha::MeasureInputs in{o, ck, sampler, 16, torch::kCPU, *dist, tmp.file(measure.name), report};
      const auto costs = measure.costs(in);
      ASSERT_EQ(costs.size(), static_cast<size_t>(2 * c.n_layers));
      for (size_t p = 0; p < costs.size(); ++p) {
        const torch::Tensor cost = costs[p];
        ASSERT_EQ(cost.sizes(), (std::vector<int64_t>{4, 4})) << p;
        EXPECT_EQ(cost.scalar_type(), torch::kFloat64);
        EXPECT_TRUE(torch::allclose(cost, cost.t(), 0, 1e-12)) << p;
        EXPECT_EQ(cost.diagonal().abs().max().item<double>(), 0.0) << p;
        EXPECT_GE(cost.min().item<double>(), 0.0) << p;
        const torch::Tensor off = cost + torch::eye(4, torch::kFloat64) * 1e9;
        EXPECT_EQ(off.argmin().item<int64_t>(), 1) << "pool " << p << ":\n" << cost;  // entry (0, 1)
      }
    }
    if (biased) {
      // The bias is part of the head: equal weight rows with different biases are not a copy.
      dha::Checkpoint other = ck;
      torch::Tensor& w = other.tensors.at("model.layers.0.self_attn.v_proj.weight");
      w = w.clone();
      w.narrow(0, 2 * c.head_dim, c.head_dim).copy_(w.narrow(0, 0, c.head_dim));
      const torch::Tensor cost = dha::weight_cost(dha::pool_weights(other, {0, true}));
      EXPECT_GT(cost[0][2].item<double>(), 1e-3) << cost;
      EXPECT_LT(cost[0][1].item<double>(), 1e-12) << cost;
    }
  }
}

// Distillation in fusion: the teacher shares the fusion model's frozen weights and
// holds its own copy of only those that train (and, when a trained weight was
// aligned, of the source's attention); the whole source (on CUDA) only when
// shared spans change the function fusion starts from and everything trains.
// On the CPU, over a source's file pages, it holds one part at a time.
TEST(ConvertPlan, DistillationTeacherCostsACopyOfWhatTrainsOnly) {
  auto fusion_plan = [](const ConvertOptions& o, bool cuda = true, bool file_pages = false) {
    for (const auto& p : dha::conversion_memory_plans(o, plan(o), torch::kBFloat16, file_pages, cuda, 1))
      if (p.stage == "fusion") return p;
    ADD_FAILURE() << "no fusion stage";
    return dha::MemoryPlan{};
  };
  auto bytes = [](const dha::MemoryPlan& p, const std::string& name) {
    for (const auto& c : p.categories)
      if (c.name == name) return c.bytes;
    return int64_t{0};
  };
  auto has = [&](const dha::MemoryPlan& p, const std::string& name) { return bytes(p, name) > 0; };
  const dha::ModelConfig c = dha::test::tiny_config();
  const int64_t layer = 4 * c.dim * c.n_heads * c.head_dim + 3 * c.dim * c.hidden_dim + 2 * c.dim;
  ConvertOptions o = options();
  ASSERT_GT(o.distill_weight, 0.0);  // the default recipe distils
  for (const char* weights : {"all", "attention", "none"}) {
    o.train_weights = weights;
    const dha::MemoryPlan p = fusion_plan(o);
    EXPECT_TRUE(has(p, "teacher logits")) << weights;
    EXPECT_FALSE(has(p, "model copies")) << weights;
    EXPECT_EQ(has(p, "source weights"), std::string(weights) != "none") << weights;
  }
  o.train_weights = "all";
  EXPECT_EQ(bytes(fusion_plan(o), "source weights"), c.parameter_count() * 2);
  // Over the source's file pages on the CPU: the largest part (a decoder layer here, or the embedding).
  EXPECT_EQ(bytes(fusion_plan(o, /*cuda=*/false, /*file_pages=*/true), "source weights"),
            std::max(layer, c.vocab_size * c.dim) * 2);
  o.share_spans = "1";
  o.budget = 0.4;
  EXPECT_FALSE(has(fusion_plan(o), "model copies"));
  EXPECT_EQ(bytes(fusion_plan(o), "source weights"), c.parameter_count() * 2);
  o.train_weights = "none";  // only the keys and queries the spans removed
  EXPECT_EQ(bytes(fusion_plan(o), "source weights"), 2 * c.dim * c.n_heads * c.head_dim * 2);
  o.train_weights = "all";
  o.share_spans.clear();
  o.budget = 0.5;
  o.distill_weight = 0;
  EXPECT_FALSE(has(fusion_plan(o), "teacher logits"));
  EXPECT_FALSE(has(fusion_plan(o), "source weights"));
}

// A GQA source at its own fraction (Llama-3-8B: 8 of 32 KV heads, 0.25) keeps
// every head; the plan says so and names the budget that removes heads.
TEST(ConvertPlan, ABudgetAtTheSourcesOwnFractionSaysItRemovesNothing) {
  dha::ModelConfig gqa = dha::test::tiny_config();  // 4 heads
  gqa.layout = dha::HeadLayout::gqa(gqa.n_layers, gqa.n_heads, 1);
  const dha::ConvertPlan same = plan(options("gqa", 0.25), gqa);
  EXPECT_NE(same.budget_note.find("keeps every K/V head"), std::string::npos) << same.budget_note;
  EXPECT_NE(same.budget_note.find("--budget 0.0625"), std::string::npos) << same.budget_note;
  EXPECT_TRUE(plan(options("dha", 0.5)).budget_note.empty());  // MHA at half: heads go
}
