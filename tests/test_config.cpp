// HeadLayout / ModelConfig: special cases, KV accounting, and bad head maps.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "dha/config.h"
#include "dha/error.h"
#include "test_util.h"

using dha::test::expect_error_containing;

namespace {

dha::ModelConfig small_config() {
  dha::ModelConfig c;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.head_dim = 8;
  c.hidden_dim = 48;
  c.vocab_size = 50;
  c.max_seq_len = 16;
  c.layout = dha::HeadLayout::mha(2, 4);
  return c;
}


}  // namespace

TEST(HeadLayout, GqaAndMhaAreSpecialCases) {
  const dha::HeadLayout gqa = dha::HeadLayout::gqa(3, 8, 2);
  EXPECT_EQ(gqa.k_map[1], (std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(gqa.uniform_gqa_kv_heads(), 2);
  EXPECT_EQ(dha::HeadLayout::mha(3, 8).uniform_gqa_kv_heads(), 8);
  dha::HeadLayout dha_layout = gqa;
  dha_layout.v_map[2] = {0, 1, 0, 1, 0, 1, 0, 1};
  EXPECT_EQ(dha_layout.uniform_gqa_kv_heads(), 0);
}

TEST(ModelConfig, KvAccountingFollowsThePerLayerCounts) {
  dha::ModelConfig c = small_config();
  EXPECT_EQ(c.kv_bytes_per_token(2), 2 * (4 + 4) * 8 * 2);
  EXPECT_DOUBLE_EQ(c.head_budget(), 1.0);
  c.layout.k_map[0] = {0, 0, 1, 0};  // H_K = 2
  c.layout.v_map[1] = {0, 0, 0, 0};  // H_V = 1
  c.validate("test");
  EXPECT_EQ(c.kv_elements_per_token(), (2 + 4 + 4 + 1) * 8);
  EXPECT_DOUBLE_EQ(c.head_budget(), 11.0 / 16.0);
}

TEST(ModelConfig, OutOfRangeHeadMapIsRejected) {
  dha::ModelConfig c = small_config();
  c.layout.k_map[1][2] = 4;
  expect_error_containing([&] { c.validate("cfg.json"); }, "k_map[1][2] = 4 is out of range");
  c.layout.k_map[1][2] = -1;
  expect_error_containing([&] { c.validate("cfg.json"); }, "out of range");
}

TEST(ModelConfig, HeadMapThatIsNotOntoIsRejected) {
  dha::ModelConfig c = small_config();
  c.layout.v_map[0] = {0, 2, 2, 0};  // head 1 unused
  expect_error_containing([&] { c.validate("cfg.json"); }, "v_map[0] never uses head 1");
}

TEST(ModelConfig, HeadMapWithWrongShapeIsRejected) {
  dha::ModelConfig c = small_config();
  c.layout.k_map.pop_back();
  expect_error_containing([&] { c.validate("cfg.json"); }, "k_map has 1 layers, expected 2");
  c = small_config();
  c.layout.v_map[1].push_back(0);
  expect_error_containing([&] { c.validate("cfg.json"); }, "v_map[1] has 5 entries");
}

TEST(ModelConfig, NonPositiveSizesAndOddHeadDimAreRejected) {
  dha::ModelConfig c = small_config();
  c.dim = 0;
  expect_error_containing([&] { c.validate("cfg.json"); }, "dim must be positive");
  c = small_config();
  c.head_dim = 7;
  expect_error_containing([&] { c.validate("cfg.json"); }, "head_dim must be even");
}

TEST(HeadLayout, JsonRoundTripAndBadJson) {
  dha::HeadLayout layout = dha::HeadLayout::gqa(2, 4, 2);
  layout.k_map[0] = {1, 0, 0, 1};
  EXPECT_EQ(dha::layout_from_json(dha::layout_to_json(layout), "x"), layout);
  expect_error_containing([] { dha::layout_from_json(nlohmann::json{{"k_map", 3}}, "x.json"); },
                          "x.json: head layout needs");
}
