// Training state on disk: the checkpoints of a run, one directory per step
// holding the trainable tensors, the optimizer state (or, sharded, one file of
// slices per rank and the manifest of the flat units) and a state.json (step,
// tokens, data cursor, world size, the trainer's records, checksums). Written
// staged + renamed, so killing the writer never damages an earlier checkpoint;
// the last K are kept. (Not dha/checkpoint.h: a model's tensors by name.)
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dha/checkpoint.h"
#include "dha/data.h"
#include "dha/distributed.h"

namespace dha {

struct TrainingState {
  std::string path;
  int64_t step = 0;
  int64_t tokens = 0;
  DataCursor cursor;
  int world_size = 1;
  nlohmann::json meta;  // configs, RNG state, task state: whatever the trainer records
  TensorMap tensors;    // trainable state (model, task extras); of a sharded checkpoint, what is not sharded
  TensorMap optimizer;  // replicated checkpoints only
  // A sharded (ZeRO) checkpoint: the manifest of its flat units (null for a
  // replicated one) and its per-rank files, rank order ("rank-<r>-of-<W>.safetensors").
  nlohmann::json zero;
  std::vector<std::string> shard_files;
};

// Writes <root>/step-<step>/ and removes all but the newest `keep` (keep <= 0: all).
std::string save_training_state(const std::string& root, const TrainingState& state, int keep);

// Collective over dist: every rank writes its file of `shard_tensors` (its
// slices of the ZeRO units described by state.zero) into the staged
// directory; rank 0 writes the tensors that are not sharded and, last, the
// state.json that lists every file's checksum, then renames the directory into
// place. Returns the directory.
std::string save_sharded_training_state(const std::string& root, const TrainingState& state,
                                        const TensorMap& shard_tensors, Distributed& dist, int keep);

// The newest checkpoint under root whose checksums verify, if any. A damaged
// newer one is skipped with a warning that names it. Of a sharded checkpoint,
// every shard file is verified.
std::optional<TrainingState> load_latest_training_state(const std::string& root);

// The same, collective over dist: each rank verifies the files it reads (of
// a sharded checkpoint, the shards `shards_needed` names for it) and a
// checkpoint any rank finds damaged is skipped by all.
std::optional<TrainingState> load_latest_training_state(
    const std::string& root, Distributed& dist,
    const std::function<std::vector<int>(const TrainingState&)>& shards_needed);

// FNV-1a 64 of a file's bytes, as 16 hex digits.
std::string file_checksum(const std::string& path);

}  // namespace dha
