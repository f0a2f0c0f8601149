// Hugging Face LLaMA directories (config.json + model.safetensors, or shards
// with model.safetensors.index.json) and the toolkit's own directory format:
// the same layout with the per-layer head maps in config.json under "dha".
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "dha/checkpoint.h"
#include "dha/tokenizer.h"

namespace dha::io {

enum class DirFormat {
  kHf,   // plain HF LLaMA; only MHA/GQA layouts
  kDha,  // HF layout + "dha": {"k_map", "v_map"} in config.json
};

struct DirSaveOptions {
  DirFormat format = DirFormat::kDha;
  // Weight dtype on disk; kFloat32, kFloat16 or kBFloat16. Undefined: the
  // checkpoint's storage dtype.
  std::optional<torch::ScalarType> dtype;
  // Split into shards of at most this many bytes (0: one model.safetensors).
  int64_t max_shard_bytes = 0;
  bool overwrite = false;
  // Files copied into the directory as they are.
  std::vector<std::pair<std::string, std::string>> extra_files;  // {source path, name in dir}
  // The tokenizer written into the directory (Tokenizer::write_files); null: none.
  const Tokenizer* tokenizer = nullptr;
};

// Reads an HF or toolkit directory; q/k rows are already rotate-half there.
Checkpoint load_hf_dir(const std::string& dir);
// Only the config (config.json), without reading any weights.
ModelConfig load_hf_dir_config(const std::string& dir);
// The dtype load_hf_dir gives the weights (the token embedding's, under its
// family's name, from the safetensors header); for a directory with only
// config.json, its torch_dtype.
torch::ScalarType hf_dir_storage_dtype(const std::string& dir);
// Writes the directory atomically (staged, then renamed into place).
void save_hf_dir(const std::string& dir, const Checkpoint& checkpoint, const DirSaveOptions& options);
// Writes config.json, the weights and the extra files into an existing
// directory (which the caller stages); options.overwrite is not used.
void write_hf_files(const std::string& dir, const Checkpoint& checkpoint, const DirSaveOptions& options);

// config.json <-> ModelConfig.
ModelConfig config_from_hf_json(const nlohmann::json& j, const std::string& where);
nlohmann::json config_to_hf_json(const ModelConfig& config, DirFormat format,
                                 torch::ScalarType dtype);

}  // namespace dha::io
