// The file formats as rows of one detection table, and the model + tokenizer
// loading every tool shares.
#include "dha/io/load.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/gguf_checkpoint.h"
#include "dha/io/hf_dir.h"
#include "dha/io/llama2c.h"
#include "dha/io/safetensors.h"
#include "dha/lookup.h"

namespace dha::io {
namespace fs = std::filesystem;

namespace {

bool has_suffix(const std::string& path, const std::string& suffix) {
  return path.size() >= suffix.size() &&
         path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// An HF or dha directory; its weights file given instead is refused here.
bool is_model_directory(const std::string& path, bool is_directory) {
  if (!is_directory && has_suffix(path, ".safetensors"))
    fail(path, ": pass the model directory (with config.json), not the .safetensors file");
  return is_directory;
}

// A GGUF file by its name, or by its magic whatever its name (llama2.c files
// start with their dim).
bool is_gguf_file(const std::string& path, bool is_directory) {
  if (is_directory) return false;
  if (has_suffix(path, ".gguf")) return true;
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  return in.read(magic, sizeof magic) && std::string(magic, sizeof magic) == "GGUF";
}

// llama2.c files have no magic: any other file is tried as one (its header
// and size are checked on load).
bool is_other_file(const std::string&, bool is_directory) { return !is_directory; }

std::vector<CheckpointFormat> make_formats() {
  return {
      {"directory", "HF LLaMA or dha directory", is_model_directory, load_hf_dir, load_hf_dir_config,
       hf_dir_storage_dtype, true},
      {"gguf", "llama.cpp .gguf", is_gguf_file, load_gguf_checkpoint,
       [](const std::string& path) { return gguf_model_config(GgufFile(path)); }, gguf_storage_dtype, false},
      {"llama2c", "llama2.c .bin", is_other_file, load_llama2c, load_llama2c_config,
       [](const std::string&) { return torch::kFloat32; }, false},
  };
}

}  // namespace

const std::vector<CheckpointFormat>& checkpoint_formats() {
  static const std::vector<CheckpointFormat> formats = make_formats();
  return formats;
}

std::string checkpoint_formats_help() {
  const auto& formats = checkpoint_formats();
  std::string help;
  for (size_t i = 0; i < formats.size(); ++i) {  // "a, b, or c"
    if (i > 0) help += i + 1 < formats.size() ? ", " : formats.size() > 2 ? ", or " : " or ";
    help += formats[i].help;
  }
  return help;
}

const CheckpointFormat& checkpoint_format(const std::string& path) {
  std::error_code error;
  const auto status = fs::status(path, error);
  if (error || !fs::exists(status)) fail(path, ": no such file or directory");
  for (const CheckpointFormat& format : checkpoint_formats())
    if (format.claims(path, fs::is_directory(status))) return format;
  fail(path, ": no checkpoint format reads it (", row_names(checkpoint_formats()), ")");
}

Checkpoint load_checkpoint(const std::string& path) { return checkpoint_format(path).load(path); }

bool loads_file_pages(const std::string& path) { return checkpoint_format(path).loads_file_pages; }

ModelConfig load_model_config(const std::string& path) { return checkpoint_format(path).load_config(path); }

torch::ScalarType load_storage_dtype(const std::string& path) {
  return checkpoint_format(path).storage_dtype(path);
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_path, const std::string& tokenizer_path,
                                                int64_t vocab) {
  std::string path = tokenizer_path;
  if (path.empty()) path = find_tokenizer_for_model(model_path, vocab);
  if (path.empty())
    fail(model_path, ": no tokenizer found in or beside the model (tokenizer.model, tokenizer.bin, tokenizer.json, tok",
         vocab, ".bin); pass --tokenizer PATH");
  return load_tokenizer(path, vocab);
}

LoadedModel load_model(const std::string& model_path, const std::string& tokenizer_path,
                       bool need_tokenizer) {
  LoadedModel loaded;
  loaded.checkpoint = load_checkpoint(model_path);
  const int64_t vocab = loaded.checkpoint.config.vocab_size;
  if (need_tokenizer || !tokenizer_path.empty())
    loaded.tokenizer = load_model_tokenizer(model_path, tokenizer_path, vocab);
  loaded.model = make_model(loaded.checkpoint, model_path);
  loaded.checkpoint.tensors.clear();  // the model owns the weights now
  return loaded;
}

}  // namespace dha::io
