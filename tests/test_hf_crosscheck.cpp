// Cross-check against an independent implementation: stories260K exported to
// an HF directory and run by transformers' LlamaForCausalLM must give our
// logits (max abs difference < 1e-4 in fp32). Skips when Python lacks transformers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>

#include "dha/io/hf_dir.h"
#include "dha/io/llama2c.h"
#include "dha/io/safetensors.h"
#include "dha/model.h"
#include "test_util.h"

namespace {

bool python_has_transformers() { return dha::test::python_imports("transformers, safetensors"); }

}  // namespace

TEST(HfCrossCheck, Stories260kLogitsMatchTransformers) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  if (!python_has_transformers())
    GTEST_SKIP() << DHA_PYTHON << " cannot import transformers (scripts/setup installs it)";
  torch::NoGradGuard no_grad;
  const dha::Checkpoint ck = dha::io::load_llama2c(dha::test::shared_path("models/stories260K/stories260K.bin"));
  dha::test::TempDir tmp;
  dha::io::DirSaveOptions options;
  options.format = dha::io::DirFormat::kHf;
  dha::io::save_hf_dir(tmp.file("hf"), ck, options);

  torch::manual_seed(0);
  const torch::Tensor tokens = torch::randint(1, ck.config.vocab_size, {2, 96}, torch::kInt64);
  tokens.select(1, 0).fill_(1);  // BOS
  const torch::Tensor logits = dha::make_model(ck, "stories260K")->forward(tokens);
  dha::io::save_safetensors(tmp.file("expected.safetensors"),
                            {{"tokens", tokens.to(torch::kFloat32)}, {"logits", logits}});

  const std::string command = std::string("\"") + DHA_PYTHON + "\" \"" + DHA_SOURCE_DIR +
                              "/tests/hf_crosscheck.py\" \"" + tmp.file("hf") + "\" \"" +
                              tmp.file("expected.safetensors") + "\"";
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}
