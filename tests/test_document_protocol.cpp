// How documents begin, end to end: dha-eval on a text and dha-train's held-out
// evaluation of the same documents through dha-tokenize's shards predict the
// same tokens with the same NLL, for a byte-level BPE model without BOS (GPT-2's
// <|endoftext|> separator), one with BOS and one with neither; token counts are
// checked against Hugging Face `tokenizers` (tests/document_protocol_reference.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dha/data.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/tokenizer_bpe.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::run_tool;
using dha::test::TempDir;
using dha::test::ToolRun;
using nlohmann::json;

namespace {

std::string shell_quote(const std::string& s) { return "\"" + s + "\""; }

bool python_has_tokenizers() { return dha::test::python_imports("tokenizers"); }

// Little stories from a fixed word list (a deterministic LCG), one per document;
// every `long_every`-th is long enough to be truncated to the model's context.
std::vector<std::string> make_documents(int n, uint32_t seed) {
  const char* words[] = {"the", "cat", "dog", "ran", "to", "a", "park", "and", "saw", "big", "red", "ball",
                         "Lily", "Max", "happy", "tree", "under", "sun", "played", "with", "friend", "said"};
  std::vector<std::string> docs;
  uint32_t state = seed;
  const auto next = [&] { return (state = state * 1664525u + 1013904223u) >> 8; };
  for (int d = 0; d < n; ++d) {
    std::string text;
    const int length = d % 5 == 3 ? 60 : 6 + static_cast<int>(next() % 12);
    for (int w = 0; w < length; ++w) {
      if (w) text += (w % 9 == 8) ? ".\n" : " ";
      text += words[next() % (sizeof(words) / sizeof(words[0]))];
    }
    docs.push_back(text + ".");
  }
  return docs;
}

std::string join_documents(const std::vector<std::string>& docs, size_t begin, size_t end) {
  std::string out;
  for (size_t d = begin; d < end; ++d) out += (d > begin ? "\n\n" : "") + docs[d];
  return out + "\n";
}

json last_json_line(const std::string& out) {
  std::istringstream in(out);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty() && line[0] == '{') last = line;
  return json::parse(last);
}

// The first evaluation line of a metrics.jsonl (the starting point).
json first_eval(const std::string& metrics_path) {
  std::istringstream in(dha::io::read_file(metrics_path));
  std::string line;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    if (j.value("event", "") == "eval") return j;
  }
  return json();
}

class DocumentProtocolTools : public ::testing::Test {
 protected:
  static constexpr int kDocs = 16;      // of which the last 4 (--heldout 0.25) are held out
  static constexpr int kHeldout = 4;
  static constexpr int64_t kContext = 48;

  void SetUp() override {
    if (!python_has_tokenizers()) GTEST_SKIP() << DHA_PYTHON << " cannot import tokenizers (scripts/setup installs it)";
    docs_ = make_documents(kDocs, 7);
    // A held-out text that spells the separator: only the shards' document
    // index keeps it one document (splitting at the separator would make two).
    docs_[kDocs - 2] += " Then <|endoftext|> came, and the story went on.";
    dha::io::write_file_atomic(tmp_.file("all.txt"), join_documents(docs_, 0, kDocs));
    dha::io::write_file_atomic(tmp_.file("heldout.txt"), join_documents(docs_, kDocs - kHeldout, kDocs));
    const std::string command = shell_quote(DHA_PYTHON) + " " +
                                shell_quote(std::string(DHA_SOURCE_DIR) + "/tests/document_protocol_reference.py") +
                                " " + shell_quote(tmp_.file("tok")) + " " + shell_quote(tmp_.file("all.txt")) + " " +
                                shell_quote(tmp_.file("heldout.txt"));
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }

  // A random model with this tokenizer, as a dha directory.
  std::string make_model(const std::string& name, const dha::Tokenizer& tokenizer) {
    dha::ModelConfig config = dha::test::tiny_config(/*tied=*/true);
    config.vocab_size = tokenizer.vocab_size();
    config.max_seq_len = kContext;
    dha::io::DirSaveOptions options;
    options.tokenizer = &tokenizer;
    const std::string dir = tmp_.file("model-" + name);
    dha::io::save_hf_dir(dir, dha::test::random_checkpoint(config, 3), options);
    return dir;
  }

  // dha-eval on heldout.txt and dha-train's starting evaluation on the held-out
  // shards of all.txt must agree, and both must count the predicted tokens that
  // `tokenizers`' lengths give under the expected protocol.
  void check(const std::string& name, dha::FirstToken first_token, int32_t token_id) {
    SCOPED_TRACE(name);
    const auto tokenizer = dha::load_tokenizer(tmp_.file("tok/" + name + "/tokenizer.json"));
    const dha::DocumentProtocol protocol = dha::document_protocol(*tokenizer);
    ASSERT_EQ(protocol.first_token, first_token);
    ASSERT_EQ(protocol.token_id, token_id);
    const std::string model = make_model(name, *tokenizer);

    const ToolRun eval = run_tool("dha-eval --model " + model + " --text " + tmp_.file("heldout.txt") + " --json", false);
    ASSERT_EQ(eval.code, 0) << eval.out;
    const json e = last_json_line(eval.out);
    EXPECT_EQ(e["first_token"], dha::first_token_name(first_token));
    if (token_id >= 0) {
      EXPECT_EQ(e["first_token_id"], token_id);
    } else {
      EXPECT_TRUE(e["first_token_id"].is_null());
    }
    if (first_token == dha::FirstToken::kSeparator) {
      EXPECT_EQ(e["separator"], "<|endoftext|>");
    }

    // The reference count: each document's ids (by `tokenizers`), plus the
    // leading BOS / separator, truncated to the context, less the given first.
    const json lengths = json::parse(dha::io::read_file(tmp_.file("tok/" + name + "/heldout_lengths.json")));
    ASSERT_EQ(lengths.size(), static_cast<size_t>(kHeldout));
    int64_t expected = 0;
    bool truncated = false;
    for (const auto& n : lengths) {
      const int64_t length = n.get<int64_t>() + (first_token == dha::FirstToken::kGiven ? 0 : 1);
      truncated |= length > kContext;
      expected += std::min(length, kContext) - 1;
    }
    EXPECT_TRUE(truncated) << "a held-out document should exceed the context";
    EXPECT_EQ(e["tokens"].get<int64_t>(), expected);
    EXPECT_EQ(e["docs"].get<int64_t>(), kHeldout);

    const ToolRun tok = run_tool("dha-tokenize --tokenizer " + model + "/tokenizer.json --heldout 0.25 --out " +
                                     tmp_.file("data-" + name) + " " + tmp_.file("all.txt"),
                                 true);
    ASSERT_EQ(tok.code, 0) << tok.out;
    const json meta = json::parse(dha::io::read_file(tmp_.file("data-" + name + "/data.json")));
    EXPECT_EQ(meta["first_token"], e["first_token"]);
    EXPECT_EQ(meta["first_token_id"], e["first_token_id"]);
    EXPECT_EQ(meta["heldout"]["docs"], kHeldout);
    const dha::TokenDataset train_split(tmp_.file("data-" + name), "train");
    EXPECT_EQ(train_split.version(), dha::kShardVersion);
    EXPECT_EQ(train_split.protocol().first_token, first_token);
    const auto train_docs = train_split.documents(-1, 0);
    ASSERT_EQ(train_docs.size(), static_cast<size_t>(kDocs - kHeldout));
    for (size_t d = 0; d < train_docs.size(); ++d)
      EXPECT_EQ(train_docs[d], dha::encode_document(*tokenizer, docs_[d])) << "training document " << d;

    const ToolRun train = run_tool("dha-train --model " + model + " --data " + tmp_.file("data-" + name) + " --out " +
                                       tmp_.file("run-" + name) +
                                       " --steps 1 --seq-len 16 --batch 1 --lr 0 --device cpu --eval-docs 0",
                                   true);
    ASSERT_EQ(train.code, 0) << train.out;
    const json t = first_eval(tmp_.file("run-" + name + "/metrics.jsonl"));
    ASSERT_FALSE(t.is_null()) << "no evaluation in metrics.jsonl";
    EXPECT_EQ(t["step"], 0);
    EXPECT_EQ(t["eval_tokens"].get<int64_t>(), expected);
    const double a = e["mean_nll"].get<double>(), b = t["eval_nll"].get<double>();
    EXPECT_NEAR(a, b, 1e-6 * a) << "dha-eval " << a << " against dha-train's held-out evaluation " << b;
  }

  TempDir tmp_;
  std::vector<std::string> docs_;
};

}  // namespace

TEST_F(DocumentProtocolTools, SeparatorLedModelWithoutBos) {
  const auto tok = dha::ByteLevelBpeTokenizer::load(tmp_.file("tok/separator/tokenizer.json"));
  ASSERT_FALSE(tok->add_bos_by_default());
  check("separator", dha::FirstToken::kSeparator, tok->token_to_id("<|endoftext|>"));
}

TEST_F(DocumentProtocolTools, BosLedModel) {
  const auto tok = dha::ByteLevelBpeTokenizer::load(tmp_.file("tok/bos/tokenizer.json"));
  check("bos", dha::FirstToken::kBos, tok->token_to_id("<|im_start|>"));
}

TEST_F(DocumentProtocolTools, ModelWithNeitherGivesTheFirstToken) {
  check("given", dha::FirstToken::kGiven, -1);
}

// Shards whose documents begin otherwise than the model's tokenizer begins
// them are refused by dha-train in one line.
TEST_F(DocumentProtocolTools, TrainRefusesShardsOfAnotherProtocol) {
  const auto bos = dha::load_tokenizer(tmp_.file("tok/bos/tokenizer.json"));
  const std::string model = make_model("bos", *bos);
  const ToolRun tok = run_tool("dha-tokenize --tokenizer " + tmp_.file("tok/separator/tokenizer.json") + " --out " +
                                   tmp_.file("sep-data") + " " + tmp_.file("all.txt"),
                               true);
  ASSERT_EQ(tok.code, 0) << tok.out;
  dha::test::expect_one_error_line("dha-train --model " + model + " --data " + tmp_.file("sep-data") + " --out " +
                                       tmp_.file("run") + " --steps 1 --seq-len 16 --batch 1 --device cpu",
                                   "documents begin with separator");
}
