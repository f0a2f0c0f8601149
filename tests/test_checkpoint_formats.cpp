// The file-format detection table (io::checkpoint_formats): every row has a
// fixture here, is detected by what it claims, and its cheap reads (config,
// storage dtype) agree with its full load; what no row reads is one clear line.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <map>

#include "dha/io/atomic_file.h"
#include "dha/io/gguf_export.h"
#include "dha/io/hf_dir.h"
#include "dha/io/llama2c.h"
#include "dha/io/load.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

using Writer = std::function<void(const std::string& path, const dha::Checkpoint&)>;

// One writer per format row; storage dtypes that differ from float32 where
// the format has them, so that the header-only dtype read is seen.
const std::map<std::string, Writer>& fixtures() {
  static const std::map<std::string, Writer> writers = {
      {"directory",
       [](const std::string& path, const dha::Checkpoint& ck) {
         dha::io::DirSaveOptions options;
         options.dtype = torch::kBFloat16;
         dha::io::save_hf_dir(path, ck, options);
       }},
      {"gguf",
       [](const std::string& path, const dha::Checkpoint& ck) {
         dha::io::save_gguf_checkpoint(path, ck, torch::kFloat16, "");
       }},
      {"llama2c",
       [](const std::string& path, const dha::Checkpoint& ck) { dha::io::save_llama2c(path, ck); }},
  };
  return writers;
}

}  // namespace

TEST(CheckpointFormats, EveryFormatIsDetectedAndItsCheapReadsAgreeWithItsLoad) {
  dha::test::TempDir tmp;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_config(), 7);
  for (const dha::io::CheckpointFormat& format : dha::io::checkpoint_formats()) {
    SCOPED_TRACE(format.name);
    const auto writer = fixtures().find(format.name);
    ASSERT_NE(writer, fixtures().end())
        << "a new format row needs its fixture in tests/test_checkpoint_formats.cpp";
    // No extension: each format is told by what the path is or holds.
    const std::string path = tmp.file(format.name + "-model");
    writer->second(path, ck);
    EXPECT_EQ(dha::io::checkpoint_format(path).name, format.name);

    const dha::Checkpoint loaded = dha::io::load_checkpoint(path);
    const dha::ModelConfig config = dha::io::load_model_config(path);
    EXPECT_EQ(config.layout, loaded.config.layout);
    EXPECT_EQ(config.dim, loaded.config.dim);
    EXPECT_EQ(config.vocab_size, loaded.config.vocab_size);
    EXPECT_EQ(config.max_seq_len, loaded.config.max_seq_len);
    EXPECT_EQ(config.tied_embeddings, loaded.config.tied_embeddings);
    EXPECT_EQ(dha::io::load_storage_dtype(path), loaded.storage_dtype);
    EXPECT_EQ(dha::io::loads_file_pages(path), format.loads_file_pages);
    for (const auto& [name, t] : ck.tensors)
      EXPECT_TRUE(torch::allclose(loaded.tensors.at(name).to(torch::kFloat32), t, 1e-2, 1e-2)) << name;
  }
}

// The tools' --model help lists the rows, in detection order.
TEST(CheckpointFormats, HelpListsEveryFormat) {
  const std::string help = dha::io::checkpoint_formats_help();
  size_t at = 0;
  for (const dha::io::CheckpointFormat& format : dha::io::checkpoint_formats()) {
    at = help.find(format.help, at);
    ASSERT_NE(at, std::string::npos) << format.name << " in \"" << help << "\"";
  }
  const std::string last = ", or " + dha::io::checkpoint_formats().back().help;
  ASSERT_GE(help.size(), last.size());
  EXPECT_EQ(help.substr(help.size() - last.size()), last);
}

TEST(CheckpointFormats, WhatNoFormatReadsIsOneClearLine) {
  dha::test::TempDir tmp;
  dha::test::expect_one_line_error([&] { dha::io::load_checkpoint(tmp.file("absent")); },
                                   tmp.file("absent") + ": no such file or directory");
  dha::io::save_hf_dir(tmp.file("m"), dha::test::random_checkpoint(dha::test::tiny_config(), 1), {});
  dha::test::expect_one_line_error(
      [&] { dha::io::load_model_config(tmp.file("m/model.safetensors")); },
      "model.safetensors: pass the model directory (with config.json), not the .safetensors file");
}
