// The evaluation protocol: documents are the blank-line-separated chunks of a
// text exactly as written, each scored as BOS + encode(chunk) (llama2.c's
// run.c); documents longer than the context are truncated, or scored whole
// by sliding windows with --stride.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/load.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

const char* kModel = "models/stories260K/stories260K.bin";
const char* kTokenizer = "models/stories260K/tok512.bin";
const char* kValid = "data/text/tinystories_valid_sample.txt";

// A tiny random model (context 24, vocab 61) and a document of `length` random ids.
dha::Llama tiny_model() { return dha::make_random_model(dha::test::tiny_config(), 5); }

std::vector<int32_t> random_document(int64_t length, uint64_t seed) {
  const torch::Tensor t = dha::test::random_tokens(1, length, dha::test::tiny_config().vocab_size, seed);
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < length; ++i) ids.push_back(static_cast<int32_t>(t[0][i].item<int64_t>()));
  return ids;
}

// -log p(ids[t]) for targets t = first..last, the model run on ids[begin, end)
// (each target's logits at position t - 1 - begin of the window).
double window_reference(dha::Llama& model, const std::vector<int32_t>& ids, int64_t begin, int64_t end,
                        int64_t first, int64_t last, std::vector<int>& scored) {
  EXPECT_LE(end - begin, model->config().max_seq_len);
  EXPECT_GE(first - 1, begin) << "a target needs its previous token in the window";
  EXPECT_LE(last - 1, end - 1);
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens =
      torch::tensor(std::vector<int64_t>(ids.begin() + begin, ids.begin() + end), torch::kInt64).unsqueeze(0);
  const torch::Tensor log_probs = torch::log_softmax(model->forward(tokens).to(torch::kFloat64), -1)[0];
  double nll = 0.0;
  for (int64_t t = first; t <= last; ++t) {
    nll -= log_probs[t - 1 - begin][ids[t]].item<double>();
    scored[t] += 1;
  }
  return nll;
}

}  // namespace

TEST(SplitDocuments, KeepsEachChunkAsWritten) {
  // Blank lines (empty or whitespace only) separate documents; a run of them is
  // one separator, with the line break ("\n" or "\r\n") that ends the last
  // line before it. Everything else is kept: edge spaces, inner line breaks.
  const auto docs = dha::split_documents(
      "\n\n first line\nsecond line \n\n  \nthird\r\n\r\n\n\n  fourth  \n \t\nlast, no newline  ");
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(docs[0], " first line\nsecond line ");
  EXPECT_EQ(docs[1], "third");
  EXPECT_EQ(docs[2], "  fourth  ");
  EXPECT_EQ(docs[3], "last, no newline  ");
  EXPECT_EQ(dha::split_documents("one\r\ntwo\r\n"), std::vector<std::string>{"one\r\ntwo"});
  EXPECT_TRUE(dha::split_documents("\n \n\t\n").empty());
  EXPECT_TRUE(dha::split_documents("").empty());
}

TEST(EvalProtocol, EdgeSpacesOfADocumentAreEncoded) {
  DHA_REQUIRE_SHARED(kTokenizer);
  const auto tokenizer = dha::load_tokenizer(dha::test::shared_path(kTokenizer));
  const std::string doc = "The cat sat. ";
  const auto docs = dha::split_documents("Hello.\n\n" + doc + "\n\n  Once upon a time\n");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[1], doc);
  EXPECT_EQ(docs[2], "  Once upon a time");
  EXPECT_NE(dha::encode_document(*tokenizer, docs[1]), dha::encode_document(*tokenizer, "The cat sat."));
  EXPECT_NE(dha::encode_document(*tokenizer, docs[2]), dha::encode_document(*tokenizer, "Once upon a time"));
}

// llama2.c's run.c-style scoring (BOS + encode(chunk) of each chunk exactly as
// written) of the first 200 documents: 19,395 predicted tokens (trimming the 15
// documents with an edge space gave 19,380); an independent numpy
// re-implementation of run.c's encode and forward gives mean NLL 1.4395888.
TEST(EvalProtocol, TinyStoriesFirst200DocumentsAsRunCScoresThem) {
  DHA_REQUIRE_SHARED(kModel);
  DHA_REQUIRE_SHARED(kValid);
  dha::io::LoadedModel m = dha::io::load_model(dha::test::shared_path(kModel), "");
  const auto docs = dha::split_documents(dha::io::read_file(dha::test::shared_path(kValid)));
  int edged = 0;
  for (size_t d = 0; d < 200; ++d) edged += docs[d].front() == ' ' || docs[d].back() == ' ';
  EXPECT_EQ(edged, 15);
  const dha::EvalResult r = dha::evaluate_nll(m.model, *m.tokenizer, docs, 200);
  EXPECT_EQ(r.docs, 200);
  EXPECT_EQ(r.tokens, 19395);
  EXPECT_EQ(r.truncated_docs, 0);
  EXPECT_NEAR(r.mean_nll, 1.4395888, 1e-6);
}

TEST(EvalStride, StrideOfTheContextOnShortDocumentsEqualsNoStride) {
  dha::Llama model = tiny_model();
  const int64_t context = model->config().max_seq_len;
  const std::vector<std::vector<int32_t>> docs = {random_document(context, 1), random_document(7, 2),
                                                  random_document(1, 3)};
  const dha::EvalResult plain = dha::evaluate_token_docs(model, docs);
  for (const int64_t stride : {context, int64_t{1}, int64_t{5}}) {
    const dha::EvalResult strided = dha::evaluate_token_docs(model, docs, 0, false, stride);
    EXPECT_EQ(strided.tokens, plain.tokens);
    EXPECT_EQ(strided.docs, 2);
    EXPECT_EQ(strided.windows, 2);
    EXPECT_DOUBLE_EQ(strided.mean_nll, plain.mean_nll) << "stride " << stride;
  }
  EXPECT_EQ(plain.tokens, context - 1 + 6);
}

TEST(EvalStride, LongDocumentIsScoredWholeByWindowsOfTheContext) {
  dha::Llama model = tiny_model();
  const int64_t context = model->config().max_seq_len;  // 24
  ASSERT_EQ(context, 24);
  const int64_t length = 60;
  const std::vector<int32_t> doc = random_document(length, 4);

  // Without --stride: the first `context` ids, context - 1 predictions.
  const dha::EvalResult cut = dha::evaluate_token_docs(model, {doc});
  EXPECT_EQ(cut.tokens, context - 1);
  EXPECT_EQ(cut.truncated_docs, 1);

  // The windows written out: {window begin, window end, first target, last
  // target}. The first window scores every prediction it makes (targets 1..24,
  // the last from its final position); each later window ends right before its
  // last target and scores the targets after those already scored.
  const std::map<int64_t, std::vector<std::array<int64_t, 4>>> plans = {
      {10, {{0, 24, 1, 24}, {10, 34, 25, 34}, {20, 44, 35, 44}, {30, 54, 45, 54}, {35, 59, 55, 59}}},
      {24, {{0, 24, 1, 24}, {24, 48, 25, 48}, {35, 59, 49, 59}}},
      {23, {{0, 24, 1, 24}, {23, 47, 25, 47}, {35, 59, 48, 59}}},
  };
  for (const auto& [stride, windows] : plans) {
    SCOPED_TRACE("stride " + std::to_string(stride));
    std::vector<int> scored(length, 0);
    double nll = 0.0;
    for (const auto& w : windows) nll += window_reference(model, doc, w[0], w[1], w[2], w[3], scored);
    EXPECT_EQ(scored[0], 0);
    for (int64_t t = 1; t < length; ++t) EXPECT_EQ(scored[t], 1) << "target " << t;
    const dha::EvalResult r = dha::evaluate_token_docs(model, {doc}, 0, false, stride);
    EXPECT_EQ(r.tokens, length - 1);
    EXPECT_EQ(r.windows, static_cast<int64_t>(windows.size()));
    EXPECT_EQ(r.truncated_docs, 0);
    // fp32 logits against the reference's fp64 log-softmax: ~1e-9 relative;
    // one token less of context for ten targets moves it by ~5e-3 here.
    EXPECT_NEAR(r.mean_nll * static_cast<double>(r.tokens), nll, 1e-7 * nll);
  }

  // Stride 1: one window per target after the first 24, each with the full context.
  std::vector<int> scored(length, 0);
  double nll = window_reference(model, doc, 0, context, 1, context, scored);
  for (int64_t t = context + 1; t < length; ++t)
    nll += window_reference(model, doc, t - context, t, t, t, scored);
  const dha::EvalResult r = dha::evaluate_token_docs(model, {doc}, 0, false, 1);
  EXPECT_EQ(r.tokens, length - 1);
  EXPECT_EQ(r.windows, 1 + length - 1 - context);
  EXPECT_NEAR(r.mean_nll * static_cast<double>(r.tokens), nll, 1e-7 * nll);
}

TEST(EvalStride, BadStrideIsOneLineError) {
  dha::Llama model = tiny_model();
  const std::vector<std::vector<int32_t>> docs = {random_document(30, 1)};
  for (const int64_t stride : {int64_t{-1}, int64_t{25}})
    dha::test::expect_one_line_error(
        [&] { dha::evaluate_token_docs(model, docs, 0, false, stride); },
        {"--stride " + std::to_string(stride), "between 1 and the model's context (24)"});
}

TEST(EvalStrideCli, BadStrideIsOneErrorLine) {
  DHA_REQUIRE_SHARED(kModel);
  DHA_REQUIRE_SHARED(kValid);
  const std::string args = "dha-eval --model " + dha::test::shared_path(kModel) + " --text " +
                           dha::test::shared_path(kValid) + " --max-docs 2 --stride ";
  for (const char* stride : {"0", "-4", "513"})
    dha::test::expect_one_error_line(args + stride, std::string("--stride ") + stride +
                                                        " must be between 1 and the model's context (512)");
}

TEST(EvalStrideCli, LongDocumentScoredWholeWithStride) {
  DHA_REQUIRE_SHARED(kModel);
  dha::test::TempDir tmp;
  std::string story;
  for (int i = 0; i < 60; ++i)
    story += "Once upon a time, there was a little girl named Lily. She loved to play. ";
  dha::io::write_file_atomic(tmp.file("long.txt"), "A short one.\n\n" + story + "\n");
  const std::string base = "dha-eval --model " + dha::test::shared_path(kModel) + " --text " +
                           tmp.file("long.txt") + " --json --save-ids " + tmp.file("ids.json");
  const auto last_json = [](const std::string& out) {
    return nlohmann::json::parse(out.substr(out.rfind('\n', out.size() - 2) + 1));
  };
  const dha::test::ToolRun cut = dha::test::run_tool(base, false);
  ASSERT_EQ(cut.code, 0) << cut.out;
  const nlohmann::json c = last_json(cut.out);
  const nlohmann::json cut_ids = nlohmann::json::parse(dha::io::read_file(tmp.file("ids.json")));
  ASSERT_EQ(cut_ids.size(), 2u);
  EXPECT_EQ(cut_ids[1].size(), 512u);
  EXPECT_EQ(c["truncated_docs"], 1);
  EXPECT_EQ(c["tokens"], cut_ids[0].size() - 1 + 511);
  EXPECT_NE(cut.out.find("truncated"), std::string::npos) << cut.out;

  const dha::test::ToolRun whole = dha::test::run_tool(base + " --stride 256", false);
  ASSERT_EQ(whole.code, 0) << whole.out;
  const nlohmann::json w = last_json(whole.out);
  const nlohmann::json ids = nlohmann::json::parse(dha::io::read_file(tmp.file("ids.json")));
  ASSERT_EQ(ids.size(), 2u);
  ASSERT_GT(ids[1].size(), 1000u);
  EXPECT_EQ(w["tokens"], ids[0].size() - 1 + ids[1].size() - 1);
  EXPECT_EQ(w["truncated_docs"], 0);
  EXPECT_EQ(w["stride"], 256);
  const int64_t n = static_cast<int64_t>(ids[1].size());
  EXPECT_EQ(w["windows"], 1 + 1 + (n - 1 - 512 + 255) / 256);
}
