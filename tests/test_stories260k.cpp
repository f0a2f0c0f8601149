// stories260K (Karpathy's TinyStories LLaMA, llama2.c format): loads, greedy
// generation reproduces llama2.c's reference text, held-out NLL is sane, and
// cached decoding equals the full forward pass on a real model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/load.h"
#include "test_util.h"

namespace {

const char* kModel = "models/stories260K/stories260K.bin";

dha::io::LoadedModel load_stories() {
  return dha::io::load_model(dha::test::shared_path(kModel), "");
}

}  // namespace

TEST(Stories260k, LoadsWithItsTokenizerAndConfig) {
  DHA_REQUIRE_SHARED(kModel);
  const dha::io::LoadedModel m = load_stories();
  const dha::ModelConfig& c = m.model->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.layout.uniform_gqa_kv_heads(), 4);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(m.tokenizer->vocab_size(), 512);
}

TEST(Stories260k, GreedyGenerationFromEmptyPromptMatchesLlama2cReference) {
  DHA_REQUIRE_SHARED(kModel);
  dha::io::LoadedModel m = load_stories();
  dha::GenerateOptions options;
  options.temperature = 0.0;
  options.max_new_tokens = 40;
  std::string text;
  dha::generate(m.model, *m.tokenizer, "", options, [&](const std::string& piece) { text += piece; });
  const std::string reference =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  EXPECT_EQ(text.substr(0, reference.size()), reference) << text;
}

TEST(Stories260k, GenerationContinuesThePrompt) {
  DHA_REQUIRE_SHARED(kModel);
  dha::io::LoadedModel m = load_stories();
  dha::GenerateOptions options;
  options.temperature = 0.8;
  options.seed = 3;
  options.max_new_tokens = 20;
  std::string text;
  const auto ids = dha::generate(m.model, *m.tokenizer, "Tom had a red ball.", options,
                                 [&](const std::string& piece) { text += piece; });
  EXPECT_EQ(text.rfind("Tom had a red ball.", 0), 0u) << text;
  EXPECT_GT(ids.size(), 0u);
  // Same seed, same text.
  std::string again;
  dha::generate(m.model, *m.tokenizer, "Tom had a red ball.", options,
                [&](const std::string& piece) { again += piece; });
  EXPECT_EQ(text, again);
}

TEST(Stories260k, CachedDecodingEqualsFullForward) {
  DHA_REQUIRE_SHARED(kModel);
  torch::NoGradGuard no_grad;
  dha::io::LoadedModel m = load_stories();
  const std::vector<int32_t> ids = m.tokenizer->encode("The cat sat on the mat and looked at the sun.", true, false);
  const torch::Tensor tokens = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
  const torch::Tensor full = m.model->forward(tokens);
  dha::KVCache cache = m.model->make_cache(1, 64, torch::kFloat32);
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < tokens.size(1); ++t) steps.push_back(m.model->forward(tokens.narrow(1, t, 1), &cache));
  EXPECT_TRUE(torch::allclose(torch::cat(steps, 1), full, 1e-4, 1e-5));
}

TEST(Stories260k, HeldOutNllIsFiniteAndFarBelowUniform) {
  DHA_REQUIRE_SHARED(kModel);
  DHA_REQUIRE_SHARED("data/text/tinystories_valid_sample.txt");
  dha::io::LoadedModel m = load_stories();
  const auto docs = dha::split_documents(
      dha::io::read_file(dha::test::shared_path("data/text/tinystories_valid_sample.txt")));
  const dha::EvalResult r = dha::evaluate_nll(m.model, *m.tokenizer, docs, 200);
  EXPECT_EQ(r.docs, 200);
  EXPECT_GT(r.tokens, 10000);
  EXPECT_TRUE(std::isfinite(r.mean_nll));
  const double uniform = std::log(512.0);  // 6.24 nats
  EXPECT_LT(r.mean_nll, 0.5 * uniform) << "mean NLL " << r.mean_nll;
  EXPECT_EQ(r.kv_bytes_per_token, 5 * (4 + 4) * 8 * 2);
}

TEST(SplitDocuments, ChunksAreSeparatedByBlankLines) {
  const auto docs = dha::split_documents("\n\nfirst line\nsecond line\n\n  \nthird\r\n\n\n  fourth  \n");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0], "first line\nsecond line");
  EXPECT_EQ(docs[1], "third");
  EXPECT_EQ(docs[2], "  fourth  ");  // as written (test_eval_protocol.cpp)
  EXPECT_TRUE(dha::split_documents("\n \n\t\n").empty());
}
