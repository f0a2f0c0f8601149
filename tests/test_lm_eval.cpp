// dha-eval against lm-evaluation-harness itself (tests/lm_eval_crosscheck.py): a
// dha directory with decoupled K/V groups and a sentencepiece tokenizer, run by
// lm-eval through its transformers remote code, must give dha-eval --task's acc and
// acc_norm exactly and every request's log-likelihood within 1e-4, and its rolling
// log-likelihood must equal dha-eval --stride C. Skips when Python lacks lm-eval.
#include <gtest/gtest.h>

#include <cstdio>
#include <sys/wait.h>

#include "dha/corpus.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/tokenizer.h"
#include "model_fixtures.h"
#include "test_util.h"

TEST(LmEvalHarness, DhaDirectoryScoresAsDhaEvalDoes) {
  dha::test::TempDir tmp;
  std::string text;
  for (int i = 0; i < 300; ++i)
    text += "The cat sat on the mat number " + std::to_string(i) + ". Is it red? Yes, it is red, or blue: " +
            std::string(i % 5, 'a') + " Paris and its park.\n\n";
  dha::io::write_file_atomic(tmp.file("text.txt"), text);
  dha::train_sentencepiece({tmp.file("text.txt")}, 320, 0.0, tmp.file("tokenizer.model"), 1);
  const auto tokenizer = dha::load_tokenizer(tmp.file("tokenizer.model"));
  dha::ModelConfig config = dha::test::tiny_dha_config();
  config.vocab_size = tokenizer->vocab_size();
  config.max_seq_len = 64;
  dha::io::DirSaveOptions options;
  options.format = dha::io::DirFormat::kDha;
  options.dtype = torch::kFloat32;
  options.tokenizer = tokenizer.get();
  dha::io::save_hf_dir(tmp.file("model"), dha::test::random_checkpoint(config, 3), options);

  const std::string command = "HF_MODULES_CACHE=\"" + tmp.file("hf_modules") +
                              "\" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \"" +
                              DHA_PYTHON + "\" \"" + DHA_SOURCE_DIR + "/tests/lm_eval_crosscheck.py\" --tools \"" +
                              DHA_TOOLS_DIR + "\" --model \"" + tmp.file("model") + "\" --work \"" +
                              tmp.file("work") + "\" 2>&1";
  std::FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) out.append(buffer, n);
  const int status = ::pclose(pipe);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 77) GTEST_SKIP() << out;
  EXPECT_EQ(code, 0) << command << "\n" << out;
  std::printf("%s", out.c_str());
}
