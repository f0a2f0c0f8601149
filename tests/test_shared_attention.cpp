// Shared Attention: equivalence with the unshared model when the source layer's
// attention is the sharer's own, cache == full forward, format round trip, KV
// and budget accounting, the similarity analysis, span parsing, and the tools
// end to end (convert, train, eval, generate, inspect) with their errors.
#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/export.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "dha/search.h"
#include "dha/shared_attention.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::Checkpoint;
using dha::LayerSpan;
using dha::ModelConfig;
using dha::test::expect_error_containing;

namespace {

std::string layer_name(int64_t l, const std::string& rest) { return "model.layers." + std::to_string(l) + "." + rest; }

// 4 layers, 4 heads of 8; GQA keys (2 groups) and decoupled values in layer 2.
ModelConfig four_layer_config(bool biased = false) {
  ModelConfig c = dha::test::tiny_config(false, biased);
  c.n_layers = 4;
  c.layout = dha::HeadLayout::gqa(4, 4, 2);
  c.layout.v_map[2] = {0, 1, 1, 2};
  return c;
}

torch::Tensor logits(const Checkpoint& ck, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  dha::Llama model = dha::make_model(ck, "test");
  return model->forward(tokens);
}

// A model in which layer 2's attention equals layer 1's: layer 1 adds nothing
// to the residual stream (zero o_proj and down_proj), so both layers see the
// same input, and layer 2 has layer 1's norm, queries and keys (and their biases).
Checkpoint model_with_repeated_attention(bool biased = false) {
  Checkpoint ck = dha::test::random_checkpoint(four_layer_config(biased), 7);
  ck.tensors[layer_name(1, "self_attn.o_proj.weight")].zero_();
  ck.tensors[layer_name(1, "mlp.down_proj.weight")].zero_();
  for (const char* name : {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                           "self_attn.q_proj.bias", "self_attn.k_proj.bias"})
    if (ck.tensors.count(layer_name(1, name))) ck.tensors[layer_name(2, name)] = ck.tensors[layer_name(1, name)].clone();
  return ck;
}

}  // namespace

TEST(SharedAttention, SourceWithTheSameAttentionGivesTheUnsharedLogits) {
  for (bool biased : {false, true}) {
    SCOPED_TRACE(biased ? "q/k/v biases" : "no biases");
    const Checkpoint unshared = model_with_repeated_attention(biased);
    const Checkpoint shared = dha::share_attention(unshared, {{2, 2}});
    for (const char* name : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.q_proj.bias",
                             "self_attn.k_proj.bias"})
      EXPECT_FALSE(shared.tensors.count(layer_name(2, name))) << name;
    EXPECT_EQ(shared.tensors.count(layer_name(2, "self_attn.v_proj.bias")), biased ? 1u : 0u);
    const torch::Tensor tokens = dha::test::random_tokens(2, 12, unshared.config.vocab_size, 3);
    const torch::Tensor expected = logits(unshared, tokens);
    EXPECT_LT((logits(shared, tokens) - expected).abs().max().item<double>(), 1e-5);

    // The same check fails when the attention differs: sharing layer 3 changes the output.
    const Checkpoint wrong = dha::share_attention(unshared, {{3, 3}});
    EXPECT_GT((logits(wrong, tokens) - expected).abs().max().item<double>(), 1e-3);
  }
}

TEST(SharedAttention, GenerationWithCacheEqualsFullForward) {
  for (bool biased : {false, true})
  for (const std::vector<LayerSpan>& spans : std::vector<std::vector<LayerSpan>>{{{1, 1}}, {{1, 2}}, {{2, 3}}, {{1, 1}, {3, 3}}}) {
    SCOPED_TRACE(biased ? "q/k/v biases" : "no biases");
    const Checkpoint ck = dha::share_attention(dha::test::random_checkpoint(four_layer_config(biased), 11), spans);
    torch::NoGradGuard no_grad;
    dha::Llama model = dha::make_model(ck, "test");
    const torch::Tensor tokens = dha::test::random_tokens(2, 14, ck.config.vocab_size, 5);
    const torch::Tensor full = model->forward(tokens);
    dha::KVCache cache = model->make_cache(2, 20, torch::kFloat32);
    // A prefill of 6 positions, a chunk of 3 (queries offset against the
    // cached keys), then one position at a time.
    std::vector<torch::Tensor> pieces = {model->forward(tokens.narrow(1, 0, 6), &cache),
                                         model->forward(tokens.narrow(1, 6, 3), &cache)};
    for (int64_t t = 9; t < 14; ++t) pieces.push_back(model->forward(tokens.narrow(1, t, 1), &cache));
    EXPECT_LT((torch::cat(pieces, 1) - full).abs().max().item<double>(), 1e-5) << dha::format_spans(spans);
    // Sharing layers cache no keys: the cache is what the accounting says.
    for (const auto& [first, last] : spans)
      for (int64_t l = first; l <= last; ++l) EXPECT_EQ(cache.k[l].numel(), 0);
    EXPECT_EQ(cache.bytes(), ck.config.kv_elements_per_token() * 20 * 2 * 4);
  }
}

TEST(SharedAttention, GradientsReachTheSourceLayerThroughTheSharedProbabilities) {
  const Checkpoint ck = dha::share_attention(dha::test::random_checkpoint(four_layer_config(), 13), {{2, 3}});
  dha::Llama model = dha::make_model(ck, "test");
  model->train();
  const torch::Tensor tokens = dha::test::random_tokens(2, 10, ck.config.vocab_size, 9);
  // Only the sharing layers' value path depends on layer 1's probabilities
  // beyond layer 1 itself: with layer 1's own output cut, any gradient on its
  // q/k comes through layers 2 and 3.
  {
    torch::NoGradGuard no_grad;
    model->model->layers[1]->as<dha::DecoderLayer>()->self_attn->o_proj->weight.zero_();
  }
  model->forward(tokens).sum().backward();
  for (const auto& item : model->named_parameters())
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
  EXPECT_GT(model->model->layers[1]->as<dha::DecoderLayer>()->self_attn->q_proj->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(SharedAttention, DhaDirectoryRoundTripsAndOtherFormatsRefuse) {
  for (bool biased : {false, true}) {
    SCOPED_TRACE(biased ? "q/k/v biases" : "no biases");
    dha::test::TempDir tmp;
    const Checkpoint ck = dha::share_attention(dha::test::random_checkpoint(four_layer_config(biased), 17), {{2, 3}});
    dha::io::save_hf_dir(tmp.file("m"), ck, {});
    const auto config = nlohmann::json::parse(dha::io::read_file(tmp.file("m/config.json")));
    EXPECT_EQ(config["dha"]["shared_attention"], nlohmann::json::parse("[[2, 3]]"));
    EXPECT_EQ(config["dha"]["k_map"][2], nlohmann::json::array());
    const Checkpoint back = dha::io::load_hf_dir(tmp.file("m"));
    EXPECT_TRUE(back.config.layout == ck.config.layout);
    const torch::Tensor tokens = dha::test::random_tokens(1, 9, ck.config.vocab_size, 1);
    EXPECT_EQ((logits(back, tokens) - logits(ck, tokens)).abs().max().item<double>(), 0.0);

    dha::io::DirSaveOptions hf;
    hf.format = dha::io::DirFormat::kHf;
    expect_error_containing([&] { dha::io::save_hf_dir(tmp.file("hf"), ck, hf); }, "L2 attn=L1");
    for (const auto& format : dha::export_formats())
      if (!format.holds_shared_attention)
        expect_error_containing([&] { dha::export_checkpoint(ck, format); }, "export dha");
  }
}

TEST(SharedAttention, LayoutJsonMustAgreeWithItself) {
  nlohmann::json j = dha::layout_to_json(dha::share_attention(dha::test::random_checkpoint(four_layer_config(), 1), {{3, 3}}).config.layout);
  EXPECT_NO_THROW(dha::layout_from_json(j, "config.json"));
  nlohmann::json wrong = j;
  wrong["shared_attention"] = nlohmann::json::parse("[[2, 3]]");
  expect_error_containing([&] { dha::layout_from_json(wrong, "config.json"); }, "layer 2 is in shared_attention but k_map[2] is not empty");
  wrong = j;
  wrong.erase("shared_attention");
  expect_error_containing([&] { dha::layout_from_json(wrong, "config.json"); }, "k_map[3] is empty");
  ModelConfig c = four_layer_config();
  c.layout.k_map[0].clear();
  expect_error_containing([&] { c.validate("config.json"); }, "layer 0 cannot share attention");

  // dha-train --from-scratch takes the same layout: a shared model can be pre-trained.
  const ModelConfig fresh = dha::model_config_from_json(
      nlohmann::json::parse(R"({"dim": 32, "n_layers": 3, "n_heads": 4, "hidden_dim": 48, "max_seq_len": 16,
        "dha": {"k_map": [[0, 0, 1, 1], [], [0, 1, 2, 3]], "v_map": [[0, 1, 2, 3], [0, 0, 0, 0], [0, 1, 2, 3]],
                "shared_attention": [[1, 1]]}})"),
      61, "model.json");
  EXPECT_EQ(fresh.layout.attention_source(1), 0);
  EXPECT_EQ(fresh.kv_elements_per_token(), (2 + 4 + 0 + 1 + 4 + 4) * 8);
}

TEST(SharedAttention, KvAndParameterAccounting) {
  {  // q/k/v biases count as parameters, and sharing layers have no q/k biases
    const Checkpoint b = dha::share_attention(dha::test::random_checkpoint(four_layer_config(true), 19), {{1, 1}, {3, 3}});
    int64_t stored = 0;
    for (const auto& [name, tensor] : b.tensors) stored += tensor.numel();
    EXPECT_EQ(b.config.parameter_count(), stored);
  }
  const Checkpoint ck = dha::share_attention(dha::test::random_checkpoint(four_layer_config(), 19), {{1, 1}, {3, 3}});
  const ModelConfig& c = ck.config;
  // Keys: 2 heads in layers 0 and 2; values: 2 + 2 + 3 + 2 heads; d_h 8.
  EXPECT_EQ(c.kv_elements_per_token(), (2 + 2 + 2 + 2 + 3 + 2) * 8);
  EXPECT_EQ(c.kv_bytes_per_token(2), 13 * 8 * 2);
  int64_t stored = 0;
  for (const auto& [name, tensor] : ck.tensors) stored += tensor.numel();
  EXPECT_EQ(c.parameter_count(), stored);
  EXPECT_EQ(c.layout.attention_source(1), 0);
  EXPECT_EQ(c.layout.attention_source(3), 2);
  EXPECT_EQ(dha::describe_layout(c), "L0 K2 V2 | L1 attn=L0 V2 | L2 K2 V3 | L3 attn=L2 V2");
  // The DHA budget with spans: 0.25 of 2*4*4 = 8 heads; the key pools of
  // layers 1 and 3 take none, so the minimum is one head in each of 6 pools,
  // and the maximum is the 13 heads left.
  EXPECT_EQ(dha::budget_heads(c, 0.25), 8);
  expect_error_containing([&] { dha::budget_heads(c, 0.5); }, "the model has only 13 K/V heads");
  expect_error_containing([&] { dha::budget_heads(c, 0.15); }, "below one head per pool (6 pools");
}

TEST(SharedAttention, SpansForABudgetFollowTheSimilarity) {
  const ModelConfig c = dha::test::random_checkpoint(four_layer_config(), 1).config;  // 8 K + 9 V heads of 32
  torch::Tensor cosine = torch::eye(4, torch::kFloat64);
  cosine[0][1] = cosine[1][0] = 0.2;
  cosine[1][2] = cosine[2][1] = 0.9;
  cosine[2][3] = cosine[3][2] = 0.5;
  cosine[1][3] = cosine[3][1] = 0.8;
  // One layer's keys (2 heads) must go: layer 2 is most like its source, layer 1.
  EXPECT_EQ(dha::choose_share_spans(c, cosine, 15.0 / 32), (std::vector<LayerSpan>{{2, 2}}));
  // Two: then layer 3, whose source is now layer 1 (similarity 0.8 > layer 1's 0.2).
  EXPECT_EQ(dha::choose_share_spans(c, cosine, 13.0 / 32), (std::vector<LayerSpan>{{2, 3}}));
  // Sharing layer 2 would re-point layer 3 (chosen first) to layer 1, which it
  // does not resemble: the choice counts that and shares layer 1 instead.
  torch::Tensor chain = torch::eye(4, torch::kFloat64);
  chain[0][1] = chain[1][0] = 0.5;
  chain[1][2] = chain[2][1] = 0.6;
  chain[2][3] = chain[3][2] = 0.9;
  chain[1][3] = chain[3][1] = 0.1;
  EXPECT_EQ(dha::choose_share_spans(c, chain, 13.0 / 32), (std::vector<LayerSpan>{{1, 1}, {3, 3}}));
  // The floor: every layer but 0 shares, 2 K + 9 V heads.
  expect_error_containing([&] { dha::choose_share_spans(c, cosine, 10.0 / 32); }, "keeps 11 of 32 heads");
}

TEST(SharedAttention, SimilarityOfIdenticalAttentionIsOne) {
  dha::Llama model = dha::make_model(model_with_repeated_attention(), "test");
  const auto s = dha::measure_attention_similarity(model, {dha::test::random_tokens(2, 12, 61, 4),
                                                           dha::test::random_tokens(2, 12, 61, 5)});
  EXPECT_EQ(s.rows, 2 * 2 * 4 * 12);
  EXPECT_NEAR(s.cosine[1][2].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(s.js[1][2].item<double>(), 0.0, 1e-6);
  EXPECT_TRUE(torch::allclose(s.cosine.diagonal(), torch::ones({4}, torch::kFloat64)));
  EXPECT_LT(s.cosine[0][3].item<double>(), 0.999);
  EXPECT_GT(s.js[0][3].item<double>(), 1e-4);
  EXPECT_LE(s.js.max().item<double>(), std::log(2.0) + 1e-9);
  EXPECT_TRUE(torch::isfinite(s.js).all().item<bool>());
}

TEST(SharedAttention, SpanSyntaxAndBadSpans) {
  EXPECT_EQ(dha::parse_share_spans("5,2-3", 6), (std::vector<LayerSpan>{{2, 3}, {5, 5}}));
  EXPECT_EQ(dha::format_spans({{2, 3}, {5, 5}}), "2-3,5-5");
  expect_error_containing([] { dha::parse_share_spans("0-2", 6); }, "starts at layer 0");
  expect_error_containing([] { dha::parse_share_spans("3-6", 6); }, "past the last layer (the model has 6 layers");
  expect_error_containing([] { dha::parse_share_spans("2-4,4-5", 6); }, "overlap");
  expect_error_containing([] { dha::parse_share_spans("4-2", 6); }, "ends before it starts");
  expect_error_containing([] { dha::parse_share_spans("two-3", 6); }, "is not a layer number");
  expect_error_containing([] { dha::parse_share_spans("", 6); }, "no spans");
}

// The tools on stories260K (5 layers, 8 query heads, 4 KV heads).
class SharedAttentionCli : public ::testing::Test {
 protected:
  void SetUp() override {
    DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
    std::string text;
    for (int i = 0; i < 40; ++i)
      text += "Once upon a time, a little girl named Lily number " + std::to_string(i) + " found a red ball.\n\n";
    dha::io::write_file_atomic(tmp_.file("calib.txt"), text);
  }
  std::string convert(const std::string& out, const std::string& extra) const {
    return "dha-convert --model " + model_ + " --tokenizer " + tokenizer_ + " --calib " + tmp_.file("calib.txt") +
           " --out " + out + " --batch 2 --seq-len 32 --search-steps 3 --fusion-steps 3 --eval-docs 4 --device cpu " +
           extra;
  }
  nlohmann::json report(const std::string& dir) const {
    return nlohmann::json::parse(dha::io::read_file(dir + "/report.json"));
  }
  dha::test::TempDir tmp_;
  const std::string model_ = dha::test::shared_path("models/stories260K/stories260K.bin");
  const std::string tokenizer_ = dha::test::shared_path("models/stories260K/tok512.bin");
};

TEST_F(SharedAttentionCli, ConvertTrainEvaluateGenerateInspect) {
  const std::string out = tmp_.file("shared");
  auto r = dha::test::run_tool(convert(out, "--method shared-attention --share-spans 3-4"), true);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto rep = report(out);
  EXPECT_EQ(rep["shared_spans"], "3-4");
  // 5 layers x (4 K + 4 V) heads x d_h 8 x 2 bytes, less the keys of layers 3 and 4.
  EXPECT_EQ(rep["kv_bytes_per_token"]["before"], 640);
  EXPECT_EQ(rep["kv_bytes_per_token"]["after"], 640 - 2 * 4 * 8 * 2);
  EXPECT_EQ(rep["attention_similarity"]["cosine"].size(), 5u);
  EXPECT_EQ(rep["layout"][4]["attention_from"], 2);
  for (const char* file : {"config.json", "model.safetensors", "report.json", "attention_similarity.svg", "attention_js.svg"})
    EXPECT_TRUE(fs::exists(out + "/" + file)) << file;

  r = dha::test::run_tool("dha-inspect --model " + out, false);
  ASSERT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("layers 3-4 use layer 2's"), std::string::npos) << r.out;
  r = dha::test::run_tool("dha-eval --model " + out + " --text " + tmp_.file("calib.txt") + " --max-docs 4 --json", false);
  ASSERT_EQ(r.code, 0) << r.out;
  const double converted = nlohmann::json::parse(r.out.substr(r.out.rfind('{')))["mean_nll"].get<double>();
  EXPECT_TRUE(std::isfinite(converted));
  r = dha::test::run_tool("dha-generate --model " + out + " --prompt 'Once upon' --max-new-tokens 8 --temperature 0", false);
  ASSERT_EQ(r.code, 0) << r.out;

  ASSERT_EQ(dha::test::run_tool("dha-tokenize --tokenizer " + tokenizer_ + " --out " + tmp_.file("data") + " " +
                                    tmp_.file("calib.txt"), true).code, 0);
  r = dha::test::run_tool("dha-train --model " + out + " --data " + tmp_.file("data") + " --out " + tmp_.file("train") +
                              " --steps 3 --seq-len 32 --batch 2 --lr 1e-3 --device cpu --eval-docs 0", true);
  ASSERT_EQ(r.code, 0) << r.out;
  const Checkpoint trained = dha::io::load_hf_dir(tmp_.file("train/model"));
  EXPECT_EQ(trained.config.layout.shared_spans(), (std::vector<LayerSpan>{{3, 4}}));
}

TEST_F(SharedAttentionCli, AutomaticSpansCombinedWithDhaAndAnalysisOnly) {
  // Budget 0.4 of 80 heads = 32 of the 40 the model has: two layers' keys go.
  auto r = dha::test::run_tool(convert(tmp_.file("auto"), "--method shared-attention --budget 0.4"), true);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto automatic = report(tmp_.file("auto"));
  EXPECT_EQ(automatic["kv_bytes_per_token"]["after"], 32 * 8 * 2);
  // The spans are the choice for the similarities the same run measured.
  std::vector<double> flat;
  for (const auto& row : automatic["attention_similarity"]["cosine"])
    for (double x : row) flat.push_back(x);
  const ModelConfig stories = dha::io::load_model(model_, tokenizer_, false).model->config();
  EXPECT_EQ(automatic["shared_spans"],
            dha::format_spans(dha::choose_share_spans(stories, torch::tensor(flat, torch::kFloat64).view({5, 5}), 0.4)));

  // Combined: layers 3-4 share, then DHA reaches 0.25 of 80 = 20 heads over the remaining pools.
  r = dha::test::run_tool(convert(tmp_.file("both"), "--method dha --share-spans 3-4 --budget 0.25"), true);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto both = report(tmp_.file("both"));
  EXPECT_EQ(both["kv_bytes_per_token"]["after"], 20 * 8 * 2);
  EXPECT_EQ(both["layout"][3]["k_heads"], 0);
  EXPECT_TRUE(both.contains("after_sharing"));
  EXPECT_LT(both["export"]["max_abs_logit_diff"].get<double>(), 1e-4);

  r = dha::test::run_tool(convert(tmp_.file("gqa"), "--method gqa --share-spans 3-4 --budget 0.2"), true);
  ASSERT_EQ(r.code, 0) << r.out;  // 16 heads: 2 per pool over the 8 pools with heads
  EXPECT_EQ(report(tmp_.file("gqa"))["kv_bytes_per_token"]["after"], 16 * 8 * 2);

  r = dha::test::run_tool(convert(tmp_.file("analysis"), "--analyze-attention"), false);
  ASSERT_EQ(r.code, 0) << r.out;
  // The printed table is the report's: layers 3-4 with their cosine.
  const auto analysis = report(tmp_.file("analysis"));
  char line[64];
  std::snprintf(line, sizeof(line), " 3-4    %.4f", analysis["attention_similarity"]["cosine"][3][4].get<double>());
  EXPECT_NE(r.out.find(line), std::string::npos) << r.out << "\nexpected: " << line;
  EXPECT_FALSE(analysis.contains("target_heads"));
  EXPECT_TRUE(fs::exists(tmp_.file("analysis/attention_similarity.svg")));
  EXPECT_FALSE(fs::exists(tmp_.file("analysis/config.json")));
}

TEST_F(SharedAttentionCli, BadSpansFailWithOneLine) {
  auto expect_error = [&](const std::string& extra, const std::string& text) {
    dha::test::expect_one_error_line(convert(tmp_.file("bad"), extra), text);
    EXPECT_FALSE(fs::exists(tmp_.file("bad")));
  };
  expect_error("--method shared-attention --share-spans 0-2", "starts at layer 0");
  expect_error("--method shared-attention --share-spans 3-5", "past the last layer (the model has 5 layers");
  expect_error("--method shared-attention --share-spans 1-3,3-4", "overlap");
  expect_error("--method shared-attention --budget 0.2", "cannot be reached by sharing attention alone");
  expect_error("--method shared-attention --share-spans 3-4 --export gqa", "only be written in the dha format");
  expect_error("--method aligned-gqa --share-spans 3-4 --budget 0.2", "not aligned-gqa");
  expect_error("--method shared-attention --share-spans 3-4 --budget 5", "must be in (0, 1]");

  // A model that already shares attention is refused where it cannot go, before any work.
  ASSERT_EQ(dha::test::run_tool(convert(tmp_.file("shared"), "--method shared-attention --share-spans 4-4"), true).code, 0);
  auto from_shared = [&](const std::string& extra) {
    std::string command = convert(tmp_.file("bad"), extra);
    command.replace(command.find(model_), model_.size(), tmp_.file("shared"));
    return command;
  };
  dha::test::expect_one_error_line(from_shared("--method aligned-gqa --budget 0.2"), "aligned-gqa needs every layer's queries");
  dha::test::expect_one_error_line(from_shared("--method dha --budget 0.25 --export mha"), "only the dha format can hold");
  EXPECT_FALSE(fs::exists(tmp_.file("bad")));
  // ... and converts further where it can: DHA on top of the shared model.
  const auto r = dha::test::run_tool(from_shared("--method dha --budget 0.25"), true);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(report(tmp_.file("bad"))["kv_bytes_per_token"]["after"], 20 * 8 * 2);
}
