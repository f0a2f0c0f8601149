// Format detection and the model + tokenizer loading every tool shares.
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

namespace dha::io {
namespace fs = std::filesystem;

namespace {

enum class CheckpointKind { kDirectory, kGguf, kLlama2c };

CheckpointKind checkpoint_kind(const std::string& path) {
  std::error_code error;
  const auto status = fs::status(path, error);
  if (error || !fs::exists(status)) fail(path, ": no such file or directory");
  if (fs::is_directory(status)) return CheckpointKind::kDirectory;
  if (path.size() >= 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0)
    fail(path, ": pass the model directory (with config.json), not the .safetensors file");
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) return CheckpointKind::kGguf;
  // A GGUF file by its magic whatever its name (llama2.c files start with their dim).
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  if (in.read(magic, sizeof magic) && std::string(magic, sizeof magic) == "GGUF") return CheckpointKind::kGguf;
  return CheckpointKind::kLlama2c;
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path) {
  switch (checkpoint_kind(path)) {
    case CheckpointKind::kDirectory: return load_hf_dir(path);
    case CheckpointKind::kGguf: return load_gguf_checkpoint(path);
    case CheckpointKind::kLlama2c: break;
  }
  return load_llama2c(path);
}

bool loads_file_pages(const std::string& path) { return checkpoint_kind(path) == CheckpointKind::kDirectory; }

ModelConfig load_model_config(const std::string& path) {
  switch (checkpoint_kind(path)) {
    case CheckpointKind::kDirectory: return load_hf_dir_config(path);
    case CheckpointKind::kGguf: return gguf_model_config(GgufFile(path));
    case CheckpointKind::kLlama2c: break;
  }
  return load_llama2c_config(path);
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

torch::ScalarType load_storage_dtype(const std::string& path) {
  switch (checkpoint_kind(path)) {
    case CheckpointKind::kDirectory: return hf_dir_storage_dtype(path);
    case CheckpointKind::kGguf: {
      const GgufFile file(path);
      const uint32_t type = file.tensor_info("token_embd.weight").type;
      return type == kGgmlF16 ? torch::kFloat16 : type == kGgmlBF16 ? torch::kBFloat16 : torch::kFloat32;
    }
    case CheckpointKind::kLlama2c: break;
  }
  return torch::kFloat32;
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
