// The command-line tools as a user meets them: --help, results, and one clear
// error line with a non-zero exit for each kind of bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

using dha::test::run_tool;
using dha::test::ToolRun;
using dha::test::expect_one_error_line;

// One line on stderr naming `expected`, exit code 1.

std::string stories() { return dha::test::shared_path("models/stories260K/stories260K.bin"); }
std::string valid_text() { return dha::test::shared_path("data/text/tinystories_valid_sample.txt"); }

}  // namespace

TEST(Cli, HelpExitsZero) {
  for (const char* tool : {"dha-generate", "dha-eval", "dha-inspect"}) {
    const ToolRun r = run_tool(std::string(tool) + " --help", false);
    EXPECT_EQ(r.code, 0) << tool;
    EXPECT_NE(r.out.find("--model"), std::string::npos) << tool;
  }
}

TEST(Cli, EvalPrintsJsonWithTheRequiredFields) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  const ToolRun r = run_tool("dha-eval --model " + stories() + " --text " + valid_text() + " --max-docs 20 --json", false);
  ASSERT_EQ(r.code, 0);
  const std::string last = r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
  const nlohmann::json j = nlohmann::json::parse(last);
  for (const char* key : {"mean_nll", "ppl", "tokens", "docs", "kv_bytes_per_token"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["docs"], 20);
  EXPECT_EQ(j["kv_bytes_per_token"], 640);
}

TEST(Cli, GenerateGreedyPrintsTheReferenceStory) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  const ToolRun r = run_tool("dha-generate --model " + stories() + " --temperature 0 --max-new-tokens 30", false);
  ASSERT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << r.out;
}

TEST(Cli, InspectShowsTheLayout) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  const ToolRun r = run_tool("dha-inspect --model " + stories(), false);
  ASSERT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("KV bytes/token: 640"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("{0,1} {2,3} {4,5} {6,7}"), std::string::npos) << r.out;
}

TEST(CliBadInput, MissingOption) { expect_one_error_line("dha-inspect", "--model is required"); }

TEST(CliBadInput, MissingModelFile) {
  expect_one_error_line("dha-inspect --model /nonexistent/model.bin", "/nonexistent/model.bin: no such file");
}

TEST(CliBadInput, TruncatedModel) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  dha::test::TempDir tmp;
  const std::string bytes = dha::io::read_file(stories());
  dha::io::write_file_atomic(tmp.file("cut.bin"), bytes.substr(0, bytes.size() / 3));
  expect_one_error_line("dha-eval --model " + tmp.file("cut.bin") + " --text " + valid_text(), "(truncated?)");
}

TEST(CliBadInput, CorruptSafetensorsHeader) {
  dha::test::TempDir tmp;
  dha::io::DirSaveOptions o;
  dha::io::save_hf_dir(tmp.file("m"), dha::test::random_checkpoint(dha::test::tiny_config(), 1), o);
  std::string bytes = dha::io::read_file(tmp.file("m/model.safetensors"));
  const uint64_t lie = 1ull << 40;  // header length far beyond the file
  std::memcpy(bytes.data(), &lie, 8);
  dha::io::write_file_atomic(tmp.file("m/model.safetensors"), bytes);
  expect_one_error_line("dha-inspect --model " + tmp.file("m"), "model.safetensors");
}

TEST(CliBadInput, TokenizerVocabMismatch) {
  DHA_REQUIRE_SHARED("models/llama2-tokenizer/tokenizer.model");
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  expect_one_error_line("dha-generate --model " + stories() + " --tokenizer " +
                            dha::test::shared_path("models/llama2-tokenizer/tokenizer.model"),
                        "tokenizer has 32000 tokens but the model's vocab is 512");
}

TEST(CliBadInput, ModelWithoutTokenizer) {
  dha::test::TempDir tmp;
  dha::io::save_hf_dir(tmp.file("m"), dha::test::random_checkpoint(dha::test::tiny_config(), 1), {});
  expect_one_error_line("dha-generate --model " + tmp.file("m"), "pass --tokenizer PATH");
}

TEST(CliBadInput, EmptyText) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  dha::test::TempDir tmp;
  dha::io::write_file_atomic(tmp.file("empty.txt"), "\n\n");
  expect_one_error_line("dha-eval --model " + stories() + " --text " + tmp.file("empty.txt"), "holds no document");
}

TEST(CliBadInput, BadOptionValue) {
  expect_one_error_line("dha-generate --model x --top-p 3", "--top-p");
}
