// Training checkpoints: a directory per step holding the trainable tensors,
// the optimizer state and a state.json (step, tokens, data cursor, RNG state,
// world size, resolved configs, checksums). Written staged + renamed, so
// killing the writer never damages an earlier checkpoint; the last K are kept.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "dha/checkpoint.h"
#include "dha/data.h"

namespace dha {

struct TrainCheckpoint {
  std::string path;
  int64_t step = 0;
  int64_t tokens = 0;
  DataCursor cursor;
  int world_size = 1;
  nlohmann::json meta;  // configs, RNG state, task state: whatever the trainer records
  TensorMap tensors;    // trainable state (model, task extras)
  TensorMap optimizer;
};

// Writes <root>/step-<step>/ and removes all but the newest `keep` (keep <= 0: all).
std::string save_train_checkpoint(const std::string& root, const TrainCheckpoint& checkpoint, int keep);

// The newest checkpoint under root whose checksums verify, if any. A damaged
// newer one is skipped with a warning that names it.
std::optional<TrainCheckpoint> load_latest_train_checkpoint(const std::string& root);

// FNV-1a 64 of a file's bytes, as 16 hex digits.
std::string file_checksum(const std::string& path);

}  // namespace dha
