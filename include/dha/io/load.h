// One entry point for every checkpoint the toolkit reads: a llama2.c .bin
// file, a llama.cpp .gguf file, an HF LLaMA directory, or a toolkit directory.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dha/checkpoint.h"
#include "dha/model.h"
#include "dha/tokenizer.h"

namespace dha::io {

// A checkpoint file format as load_checkpoint detects it. The rows are tried
// in order and the first that claims the path reads it; docs/architecture.md,
// "How to add a file format".
struct CheckpointFormat {
  std::string name;
  std::string help;  // what a --model path of this format is ("llama.cpp .gguf")
  // Whether `path` (a directory or not) is this format's, by its kind, name or
  // first bytes; may refuse a path that is this format's in the wrong form.
  std::function<bool(const std::string& path, bool is_directory)> claims;
  std::function<Checkpoint(const std::string& path)> load;
  std::function<ModelConfig(const std::string& path)> load_config;          // without the weights
  std::function<torch::ScalarType(const std::string& path)> storage_dtype;  // from headers only
  bool loads_file_pages = false;  // the weights are views of the file's pages (see loads_file_pages)
};

// Every format, in detection order: model directory, gguf, llama2c.
const std::vector<CheckpointFormat>& checkpoint_formats();
// "HF LLaMA or dha directory, llama.cpp .gguf, or llama2.c .bin": the rows'
// help, for the tools' --model.
std::string checkpoint_formats_help();
// The format that reads `path`; a missing path is a dha::Error.
const CheckpointFormat& checkpoint_format(const std::string& path);

Checkpoint load_checkpoint(const std::string& path);
// Only the config of any checkpoint load_checkpoint reads (cheap: no weights).
ModelConfig load_model_config(const std::string& path);
// The dtype load_checkpoint will give its weights (the token embedding's),
// read from the file headers only.
torch::ScalarType load_storage_dtype(const std::string& path);
// Whether load_checkpoint's weights are pages of the file (safetensors
// directories: io::release_resident_pages can hand them back) rather than
// memory of their own (GGUF dequantized, llama2.c).
bool loads_file_pages(const std::string& path);

// The model (CPU, float32, eval mode) and its tokenizer: `tokenizer_path`, or
// when empty the tokenizer inside / beside the model. A tokenizer whose vocab
// differs from the model's is a dha::Error.
// The tokenizer given, else the one in or beside the model (a .gguf model's
// own); its vocab must fit the model's. Throws when there is none.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_path, const std::string& tokenizer_path,
                                                int64_t vocab);

struct LoadedModel {
  Checkpoint checkpoint;  // config and storage dtype; tensors released after loading
  Llama model{nullptr};
  std::unique_ptr<Tokenizer> tokenizer;
};
LoadedModel load_model(const std::string& model_path, const std::string& tokenizer_path,
                       bool need_tokenizer = true);

}  // namespace dha::io
