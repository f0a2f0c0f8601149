// The embedded demo model (models/demo-mha): present in every checkout, small,
// a plain MHA HF directory with its sentencepiece tokenizer, and it loads,
// round-trips and generates like any other model.
#include <filesystem>

#include <gtest/gtest.h>

#include "dha/eval.h"
#include "dha/io/hf_dir.h"
#include "dha/io/load.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {
const std::string kDemo = std::string(DHA_SOURCE_DIR) + "/models/demo-mha";
}

TEST(DemoModel, IsASmallBf16MhaModelWithItsTokenizer) {
  ASSERT_TRUE(fs::exists(kDemo + "/model.safetensors")) << kDemo << " is part of the repository";
  EXPECT_LT(fs::file_size(kDemo + "/model.safetensors"), 10'000'000u);
  const dha::Checkpoint ck = dha::io::load_hf_dir(kDemo);
  EXPECT_EQ(ck.storage_dtype, torch::kBFloat16);
  EXPECT_EQ(ck.config.n_layers, 6);
  EXPECT_EQ(ck.config.n_heads, 8);
  EXPECT_EQ(ck.config.dim, 256);
  EXPECT_EQ(ck.config.layout.uniform_gqa_kv_heads(), 8);  // MHA
  EXPECT_DOUBLE_EQ(ck.config.head_budget(), 1.0);

  dha::io::LoadedModel m = dha::io::load_model(kDemo, "", /*need_tokenizer=*/true);
  EXPECT_EQ(m.tokenizer->vocab_size(), ck.config.vocab_size);
  // It has learned its corpus: a King James verse scores far below the
  // uniform ln(vocab) = 7.6 nats per token.
  const dha::EvalResult r =
      dha::evaluate_nll(m.model, *m.tokenizer, {"In the beginning God created the heaven and the earth."});
  EXPECT_LT(r.mean_nll, 4.0);
}
