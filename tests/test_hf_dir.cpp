// HF and toolkit directories: bit-exact round trips (single file, shards,
// bf16, decoupled layouts, llama2.c -> HF with the q/k permutation) and bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "dha/io/llama2c.h"
#include "dha/io/load.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::io::DirFormat;
using dha::io::DirSaveOptions;

namespace {

void expect_same_checkpoint(const dha::Checkpoint& a, const dha::Checkpoint& b) {
  EXPECT_EQ(a.config.dim, b.config.dim);
  EXPECT_EQ(a.config.n_layers, b.config.n_layers);
  EXPECT_EQ(a.config.n_heads, b.config.n_heads);
  EXPECT_EQ(a.config.head_dim, b.config.head_dim);
  EXPECT_EQ(a.config.hidden_dim, b.config.hidden_dim);
  EXPECT_EQ(a.config.vocab_size, b.config.vocab_size);
  EXPECT_EQ(a.config.max_seq_len, b.config.max_seq_len);
  EXPECT_EQ(a.config.rope_theta, b.config.rope_theta);
  EXPECT_EQ(a.config.norm_eps, b.config.norm_eps);
  EXPECT_EQ(a.config.tied_embeddings, b.config.tied_embeddings);
  EXPECT_EQ(a.config.layout, b.config.layout);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    EXPECT_EQ(t.scalar_type(), b.tensors.at(name).scalar_type()) << name;
    EXPECT_TRUE(torch::equal(t, b.tensors.at(name))) << name;
  }
}

DirSaveOptions options(DirFormat format) {
  DirSaveOptions o;
  o.format = format;
  return o;
}

void expect_load_error(const std::string& dir, const std::string& text) {
  try {
    dha::io::load_hf_dir(dir);
    FAIL() << "expected an error containing '" << text << "'";
  } catch (const dha::Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

// A valid HF directory whose config.json is then edited by `edit`.
std::string dir_with_config_edit(const dha::test::TempDir& tmp,
                                 const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = tmp.file("m");
  dha::io::save_hf_dir(dir, dha::test::random_checkpoint(dha::test::tiny_config(), 2), options(DirFormat::kHf));
  nlohmann::json j = nlohmann::json::parse(dha::io::read_file(dir + "/config.json"));
  edit(j);
  dha::io::write_file_atomic(dir + "/config.json", j.dump());
  return dir;
}

}  // namespace

TEST(HfDir, SingleFileRoundTripIsBitExact) {
  dha::test::TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 1);
  dha::io::save_hf_dir(tmp.file("m"), ck, options(DirFormat::kHf));
  EXPECT_TRUE(fs::exists(tmp.file("m/model.safetensors")));
  expect_same_checkpoint(ck, dha::io::load_hf_dir(tmp.file("m")));
}

TEST(HfDir, ShardedRoundTripIsBitExact) {
  dha::test::TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(/*tied=*/true), 2);
  DirSaveOptions o = options(DirFormat::kHf);
  o.max_shard_bytes = 20000;
  dha::io::save_hf_dir(tmp.file("m"), ck, o);
  EXPECT_TRUE(fs::exists(tmp.file("m/model.safetensors.index.json")));
  EXPECT_FALSE(fs::exists(tmp.file("m/model.safetensors")));
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(tmp.file("m")))
    shards += entry.path().extension() == ".safetensors";
  EXPECT_GT(shards, 2);
  expect_same_checkpoint(ck, dha::io::load_hf_dir(tmp.file("m")));
}

TEST(HfDir, Bf16RoundTripKeepsTheStorageDtype) {
  dha::test::TempDir tmp;
  dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 3);
  for (auto& [name, t] : ck.tensors) t = t.to(torch::kBFloat16);
  ck.storage_dtype = torch::kBFloat16;
  dha::io::save_hf_dir(tmp.file("m"), ck, options(DirFormat::kHf));
  const dha::Checkpoint back = dha::io::load_hf_dir(tmp.file("m"));
  EXPECT_EQ(back.storage_dtype, torch::kBFloat16);
  expect_same_checkpoint(ck, back);
}

TEST(DhaDir, DecoupledLayoutRoundTripsWithItsMaps) {
  dha::test::TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_dha_config(), 4);
  dha::io::save_hf_dir(tmp.file("m"), ck, options(DirFormat::kDha));
  const nlohmann::json j = nlohmann::json::parse(dha::io::read_file(tmp.file("m/config.json")));
  EXPECT_EQ(j["model_type"], "dha_llama");
  EXPECT_EQ(j["dha"]["k_map"][0], (std::vector<int64_t>{1, 0, 1, 1}));
  expect_same_checkpoint(ck, dha::io::load_hf_dir(tmp.file("m")));
}

TEST(DhaDir, HfFormatRefusesADecoupledLayout) {
  dha::test::TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_dha_config(), 4);
  EXPECT_THROW(dha::io::save_hf_dir(tmp.file("m"), ck, options(DirFormat::kHf)), dha::Error);
  EXPECT_FALSE(fs::exists(tmp.file("m")));
}

TEST(HfDir, Stories260kToHfDirectoryAndBackIsBitExact) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  torch::NoGradGuard no_grad;
  const std::string bin = dha::test::shared_path("models/stories260K/stories260K.bin");
  const dha::Checkpoint ck = dha::io::load_llama2c(bin);
  dha::test::TempDir tmp;
  dha::io::save_hf_dir(tmp.file("hf"), ck, options(DirFormat::kHf));
  const dha::Checkpoint back = dha::io::load_checkpoint(tmp.file("hf"));
  expect_same_checkpoint(ck, back);
  // And back to llama2.c: the weights (q/k permuted twice) are the original bytes.
  dha::io::save_llama2c(tmp.file("again.bin"), back);
  const std::string a = dha::io::read_file(bin), b = dha::io::read_file(tmp.file("again.bin"));
  const size_t rope = ck.config.max_seq_len * ck.config.head_dim * 4;
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a.compare(0, a.size() - rope, b, 0, b.size() - rope), 0);
}

TEST(HfDir, ExistingDirectoryIsNotOverwrittenUnlessAsked) {
  dha::test::TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 5);
  dha::io::save_hf_dir(tmp.file("m"), ck, options(DirFormat::kHf));
  EXPECT_THROW(dha::io::save_hf_dir(tmp.file("m"), ck, options(DirFormat::kHf)), dha::Error);
  DirSaveOptions o = options(DirFormat::kHf);
  o.overwrite = true;
  dha::io::save_hf_dir(tmp.file("m"), ck, o);
  expect_same_checkpoint(ck, dha::io::load_hf_dir(tmp.file("m")));
}

TEST(HfDirBadInput, MissingConfig) {
  dha::test::TempDir tmp;
  expect_load_error(tmp.path(), "no config.json");
}

TEST(HfDirBadInput, ConfigNotJson) {
  dha::test::TempDir tmp;
  dha::io::write_file_atomic(tmp.file("config.json"), "{ not json");
  expect_load_error(tmp.path(), "config.json: not valid JSON");
}

TEST(HfDirBadInput, ConfigMissingField) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json& j) { j.erase("hidden_size"); });
  expect_load_error(dir, "field \"hidden_size\" is missing");
}

TEST(HfDirBadInput, ConfigFieldWithWrongType) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json& j) { j["num_hidden_layers"] = "two"; });
  expect_load_error(dir, "field \"num_hidden_layers\" has the wrong type");
}

TEST(HfDirBadInput, TensorShapeDisagreesWithConfig) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json& j) { j["num_key_value_heads"] = 2; });
  expect_load_error(dir, "self_attn.k_proj.weight' has shape [32, 32] but the config implies [16, 32]");
}

TEST(HfDirBadInput, VocabDisagreesWithEmbedding) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json& j) { j["vocab_size"] = 64; });
  expect_load_error(dir, "model.embed_tokens.weight' has shape [61, 32]");
}

TEST(HfDirBadInput, OutOfRangeHeadMap) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json& j) {
    j["dha"] = {{"k_map", {{0, 1, 2, 9}, {0, 1, 2, 3}}}, {"v_map", {{0, 1, 2, 3}, {0, 1, 2, 3}}}};
  });
  expect_load_error(dir, "k_map[0][3] = 9 is out of range");
}

TEST(HfDirBadInput, UnsupportedRopeScaling) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json& j) {
    j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  });
  expect_load_error(dir, "(\"rope_scaling\"): RoPE scaling type \"yarn\" is not supported (supported: default, linear, llama3)");
}

TEST(HfDirBadInput, NoWeights) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json&) {});
  fs::remove(dir + "/model.safetensors");
  expect_load_error(dir, "neither model.safetensors nor model.safetensors.index.json");
}

TEST(HfDirBadInput, IndexNamesAMissingShard) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json&) {});
  fs::remove(dir + "/model.safetensors");
  dha::io::write_file_atomic(dir + "/model.safetensors.index.json",
                             R"({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})");
  expect_load_error(dir, "model-00001-of-00002.safetensors");
}

TEST(HfDirBadInput, TruncatedWeightsFile) {
  dha::test::TempDir tmp;
  const std::string dir = dir_with_config_edit(tmp, [](nlohmann::json&) {});
  const std::string bytes = dha::io::read_file(dir + "/model.safetensors");
  dha::io::write_file_atomic(dir + "/model.safetensors", bytes.substr(0, bytes.size() / 2));
  expect_load_error(dir, "model.safetensors");
}
