// Checkpoint families: one adapter per config.json model_type, holding all that
// its checkpoints do differently from the toolkit's LLaMA: the config quirks the
// reader applies, the tensor names (both ways), what the writer emits, the GGUF
// architecture and what the transformers remote code reads. The table is
// checkpoint_families() (src/io/checkpoint_families.cpp); nothing else switches
// on model_type. docs/architecture.md, "How to add a checkpoint family".
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "dha/config.h"

namespace dha::io {

// A run of whole dotted name pieces that a family's checkpoints spell
// differently from the canonical names (HF LLaMA's, dha/checkpoint.h):
// {"transformer.h", "model.layers"} maps "transformer.h.0.mlp.up_proj.weight".
struct TensorRename {
  std::string checkpoint;
  std::string canonical;
};

struct CheckpointFamily {
  std::string name;  // config.json "model_type"
  // What its checkpoints are and what the reader accepts of them, in a
  // sentence: the supported-models table of the docs (scripts/docs_generate).
  std::string summary;

  // ---- config.json -> ModelConfig (io::config_from_hf_json)
  // transformers' default for a config.json without max_position_embeddings.
  int64_t default_max_position_embeddings = 0;
  // Whether the attention has q/k/v biases; refuses biases dha does not have.
  std::function<bool(const nlohmann::json& config, const std::string& where)> attention_bias;
  // Refuses a sliding window that could mask a position within c.max_seq_len
  // (empty: the family has no sliding windows).
  std::function<void(const nlohmann::json& config, const ModelConfig& c, const std::string& where)>
      check_sliding_windows;

  // ---- tensor names: checkpoint -> canonical on read, back on write
  std::vector<TensorRename> tensor_renames;
  std::string canonical_name(const std::string& checkpoint_name) const;
  std::string checkpoint_name(const std::string& canonical_name) const;

  // ---- what the writer emits (io::config_to_hf_json)
  // Whether a config is written as this family (exactly one family writes any
  // config); empty: read only, never written.
  std::function<bool(const ModelConfig& config)> writes;
  std::string architecture;  // config.json "architectures" of a written directory

  // ---- GGUF (io::gguf_model_config, io::gguf_architecture)
  // llama.cpp's general.architecture of this family's models; empty: none.
  std::string gguf_architecture;

  // ---- the transformers remote code of dha directories (python/dha_hf)
  // A JSON object: the fields DhaConfig sets when it reads a dha directory
  // written as this model_type (WRITTEN_AS in configuration_dha.py, which
  // tests check against this); empty for a family the writer never emits.
  std::string remote_code_fields;
};

// Every family, in the order errors list them.
const std::vector<CheckpointFamily>& checkpoint_families();

// The family of a config.json ("model_type", llama when absent, as
// transformers' LlamaConfig); otherwise `where: model_type "x" is not
// supported (supported: ...)`.
const CheckpointFamily& config_family(const nlohmann::json& config, const std::string& where);

// The family the writer writes `config` as: llama for a GQA layout, qwen2 for
// one with q/k/v biases, dha_llama for any other layout.
const CheckpointFamily& written_family(const ModelConfig& config);

// The first family whose GGUF architecture is `architecture`, or null; and
// "llama, deci": every GGUF architecture of the table, once each.
const CheckpointFamily* find_gguf_family(const std::string& architecture);
std::string gguf_architectures();

}  // namespace dha::io
