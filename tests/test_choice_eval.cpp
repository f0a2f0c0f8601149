// Multiple-choice evaluation (dha/choice_eval.h): lm-eval's context /
// continuation split, each request's log-likelihood against a plain forward
// pass of context + continuation, the same scores for every batch size and
// order, acc / acc_norm by their definitions, and the task file's errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "dha/choice_eval.h"
#include "dha/corpus.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "model_fixtures.h"
#include "test_util.h"

using dha::test::TempDir;

namespace {

// A sentencepiece vocab of 300 trained here and a random model over it (context 24).
class ChoiceEval : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text;
    for (int i = 0; i < 200; ++i)
      text += "The cat sat on the mat number " + std::to_string(i) + ". Is it red? Yes, it is red or blue.\n\n";
    dha::io::write_file_atomic(tmp_.file("text.txt"), text);
    dha::train_sentencepiece({tmp_.file("text.txt")}, 300, 0.0, tmp_.file("tokenizer.model"), 1);
    tokenizer_ = dha::load_tokenizer(tmp_.file("tokenizer.model"));
    dha::ModelConfig config = dha::test::tiny_config();
    config.vocab_size = 300;
    model_ = dha::make_random_model(config, 11);
  }
  std::vector<dha::ChoiceItem> items() const {
    return {{"The cat sat on the", {" mat", " red", " blue cat"}, 0},
            {"Is it red? ", {"Yes", "No, it is blue."}, 1},  // trailing space: moves to the continuation
            {"Question: what colour?\nAnswer:", {" red", " blue", " green", " mat"}, 2},
            {"A long context that is longer than the twenty four token window of this model, so that its "
             "first tokens fall off the left as lm-eval cuts them",
             {" yes", " no"}, 1},
            {"", {"The cat", "A dog"}, 0}};
  }
  // -sum log p over the continuation, the model run once on (context + continuation)[:-1].
  double reference(const dha::ChoiceRequest& r) {
    torch::NoGradGuard no_grad;
    std::vector<int64_t> whole(r.context_ids.begin(), r.context_ids.end());
    whole.insert(whole.end(), r.continuation_ids.begin(), r.continuation_ids.end());
    const int64_t keep = std::min<int64_t>(whole.size(), model_->config().max_seq_len + 1);
    whole.erase(whole.begin(), whole.end() - keep);
    const torch::Tensor tokens = torch::tensor(std::vector<int64_t>(whole.begin(), whole.end() - 1)).unsqueeze(0);
    const torch::Tensor log_probs = torch::log_softmax(model_->forward(tokens).to(torch::kFloat64), -1)[0];
    double ll = 0.0;
    const int64_t n = r.continuation_ids.size(), first = tokens.size(1) - n;
    for (int64_t i = 0; i < n; ++i) ll += log_probs[first + i][r.continuation_ids[i]].item<double>();
    return ll;
  }
  TempDir tmp_;
  std::unique_ptr<dha::Tokenizer> tokenizer_;
  dha::Llama model_{nullptr};
};

}  // namespace

TEST_F(ChoiceEval, EncodePairMovesTrailingSpaceAndCutsTheWholeAtTheContext) {
  const auto e = dha::encode_choice_pair(*tokenizer_, "Is it red? ", "Yes", dha::ChoiceFirstToken::kNone);
  EXPECT_EQ(e.context, tokenizer_->encode("Is it red?", false, false));
  const auto whole = tokenizer_->encode("Is it red? Yes", false, false);
  EXPECT_EQ(std::vector<int32_t>(whole.begin() + e.context.size(), whole.end()), e.continuation);
  const auto led = dha::encode_choice_pair(*tokenizer_, "Is it red? ", "Yes", dha::ChoiceFirstToken::kDocument);
  ASSERT_FALSE(led.context.empty());
  EXPECT_EQ(led.context.front(), tokenizer_->bos_id());
  EXPECT_EQ(led.continuation, e.continuation);
  // Unicode whitespace (U+00A0, U+3000) is Python whitespace too.
  const auto nbsp = dha::encode_choice_pair(*tokenizer_, "red\xC2\xA0\xE3\x80\x80", "x", dha::ChoiceFirstToken::kNone);
  EXPECT_EQ(nbsp.context, tokenizer_->encode("red", false, false));
  // The tokenizer's default (sentencepiece: BOS) is the document protocol here.
  EXPECT_EQ(dha::encode_choice_pair(*tokenizer_, "Is it red? ", "Yes", dha::ChoiceFirstToken::kTokenizer).context,
            led.context);
  // An empty context is led by lm-eval's prefix token (BOS).
  const auto empty = dha::encode_choice_pair(*tokenizer_, "", "The cat", dha::ChoiceFirstToken::kNone);
  EXPECT_EQ(empty.context, std::vector<int32_t>{tokenizer_->bos_id()});
  EXPECT_EQ(empty.continuation, tokenizer_->encode("The cat", false, false));
}

TEST_F(ChoiceEval, LogLikelihoodsMatchAPlainForwardForEveryBatchSize) {
  for (auto first : {dha::ChoiceFirstToken::kNone, dha::ChoiceFirstToken::kTokenizer}) {
    const dha::ChoiceTaskResult one = dha::evaluate_choice_task(model_, *tokenizer_, items(), first, 1, false, false);
    const dha::ChoiceTaskResult many = dha::evaluate_choice_task(model_, *tokenizer_, items(), first, 5, false, false);
    // The default: contexts run once, every choice continued from their KV cache.
    const dha::ChoiceTaskResult shared = dha::evaluate_choice_task(model_, *tokenizer_, items(), first, 5, false);
    ASSERT_EQ(one.requests.size(), 13u);
    for (size_t i = 0; i < one.requests.size(); ++i) {
      const auto& r = one.requests[i];
      EXPECT_NEAR(r.loglikelihood, reference(r), 1e-4) << i;
      EXPECT_NEAR(many.requests[i].loglikelihood, r.loglikelihood, 1e-5) << i;
      EXPECT_EQ(many.requests[i].is_greedy, r.is_greedy);
      EXPECT_NEAR(shared.requests[i].loglikelihood, r.loglikelihood, 1e-5) << i;
      EXPECT_EQ(shared.requests[i].is_greedy, r.is_greedy);
      EXPECT_EQ(shared.requests[i].continuation_ids, r.continuation_ids);
      EXPECT_LT(r.loglikelihood, 0.0);
    }
    // The long context is longer than the model's window: its request was cut on the left.
    EXPECT_GT(one.requests[9].context_ids.size() + one.requests[9].continuation_ids.size(), 25u);
  }
}

TEST_F(ChoiceEval, AccAndAccNormFollowTheirDefinitions) {
  const auto task = items();
  const dha::ChoiceTaskResult r = dha::evaluate_choice_task(model_, *tokenizer_, task, dha::ChoiceFirstToken::kDocument, 4, false);
  double acc = 0, acc_norm = 0;
  size_t at = 0;
  for (const auto& item : task) {
    int64_t best = 0, best_norm = 0;
    for (size_t c = 0; c < item.choices.size(); ++c) {
      const auto chars = [&](size_t k) { return static_cast<double>(item.choices[k].size()); };  // ASCII here
      if (r.requests[at + c].loglikelihood > r.requests[at + best].loglikelihood) best = c;
      if (r.requests[at + c].loglikelihood / chars(c) > r.requests[at + best_norm].loglikelihood / chars(best_norm))
        best_norm = c;
    }
    acc += best == item.gold;
    acc_norm += best_norm == item.gold;
    at += item.choices.size();
  }
  EXPECT_DOUBLE_EQ(r.acc, acc / 5);
  EXPECT_DOUBLE_EQ(r.acc_norm, acc_norm / 5);
  EXPECT_NEAR(r.acc_stderr, std::sqrt(r.acc * (1 - r.acc) / 4), 1e-12);  // sample std over sqrt(n)
}

TEST(ChoiceTaskFile, BadItemsNameFileLineAndField) {
  TempDir tmp;
  const auto expect = [&](const std::string& line, std::initializer_list<std::string> needles) {
    dha::io::write_file_atomic(tmp.file("t.jsonl"), "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 1}\n" + line + "\n");
    dha::test::expect_one_line_error([&] { dha::read_choice_task(tmp.file("t.jsonl")); }, needles);
  };
  expect("{\"choices\": [\"x\", \"y\"], \"gold\": 0}", {"t.jsonl:2:", "\"context\""});
  expect("{\"context\": \"a\", \"choices\": [\"x\"], \"gold\": 0}", {"t.jsonl:2:", "at least two"});
  expect("{\"context\": \"a\", \"choices\": [\"x\", 3], \"gold\": 0}", {"t.jsonl:2:", "non-empty string"});
  expect("{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 2}", {"t.jsonl:2:", "\"gold\"", "0..1"});
  expect("{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": \"0\"}", {"t.jsonl:2:", "\"gold\""});
  expect("not json", {"t.jsonl:2:", "not JSON"});
  dha::io::write_file_atomic(tmp.file("empty.jsonl"), "\n");
  dha::test::expect_one_line_error([&] { dha::read_choice_task(tmp.file("empty.jsonl")); }, {"empty.jsonl", "no item"});
  dha::io::write_file_atomic(tmp.file("good.jsonl"),
                             "{\"context\": \"a b\", \"choices\": [\" x\", \" y\"], \"gold\": 1}\n\n");
  const auto items = dha::read_choice_task(tmp.file("good.jsonl"));
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].choices[1], " y");
  EXPECT_EQ(items[0].gold, 1);
}

TEST_F(ChoiceEval, ToolPrintsOneTableAndJsonAndRefusesABadTaskBeforeLoading) {
  dha::io::DirSaveOptions options;
  options.tokenizer = tokenizer_.get();
  options.dtype = torch::kFloat32;
  dha::io::save_hf_dir(tmp_.file("model"), model_->shared_checkpoint(torch::kFloat32), options);
  std::string task;
  for (const auto& item : items())
    task += nlohmann::json{{"context", item.context}, {"choices", item.choices}, {"gold", item.gold}}.dump() + "\n";
  dha::io::write_file_atomic(tmp_.file("first.jsonl"), task);
  dha::io::write_file_atomic(tmp_.file("second.jsonl"), task);
  const dha::test::ToolRun r =
      dha::test::run_tool("dha-eval --model " + tmp_.file("model") + " --task " + tmp_.file("first.jsonl") +
                              " --task " + tmp_.file("second.jsonl") + " --max-items 3 --json --save-requests " +
                              tmp_.file("requests.jsonl"),
                          false);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto json = nlohmann::json::parse(r.out.substr(r.out.rfind("\n", r.out.size() - 2) + 1));
  ASSERT_TRUE(json["tasks"].contains("first") && json["tasks"].contains("second")) << r.out;
  EXPECT_EQ(json["tasks"]["first"]["items"], 3);
  EXPECT_EQ(json["tasks"]["first"]["acc"], json["tasks"]["second"]["acc"]);
  EXPECT_EQ(json["first_token"], "tokenizer");
  const std::string requests = dha::io::read_file(tmp_.file("requests.jsonl"));
  EXPECT_EQ(std::count(requests.begin(), requests.end(), '\n'), 2 * (3 + 2 + 4));
  dha::io::write_file_atomic(tmp_.file("bad.jsonl"), "{\"context\": \"a\"}\n");
  dha::test::expect_one_error_line("dha-eval --model " + tmp_.file("missing-model") + " --task " +
                                       tmp_.file("bad.jsonl"),
                                   "bad.jsonl:1:");
}
