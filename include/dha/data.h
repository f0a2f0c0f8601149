// Token shards and the deterministic, resumable sequence sampler shared by
// dha-train and the fusion stage of dha-convert.
//
// Shard file (.tok): a 64-byte header
//   magic "DHATOK\0\0" | u32 version (1) | u32 bytes per token (2 = uint16, 4 = uint32)
//   | u64 vocab size | u64 token count | u64 document count | 24 reserved zero bytes
// then the tokens, little-endian. Every document starts with BOS.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

namespace dha {

constexpr uint32_t kShardVersion = 1;
constexpr int64_t kShardHeaderBytes = 64;

// Writes a shard atomically (uint16 tokens when the vocab fits, else uint32).
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size,
                       int64_t documents);

class TokenShard {
 public:
  // Maps the file and validates the header against the file size.
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return count_; }
  int64_t vocab_size() const { return vocab_; }
  int64_t documents() const { return documents_; }
  int64_t bytes_per_token() const { return width_; }
  int64_t at(int64_t i) const;
  // Copies tokens [begin, begin + n) into out.
  void read(int64_t begin, int64_t n, int64_t* out) const;

 private:
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  int64_t width_ = 0, count_ = 0, vocab_ = 0, documents_ = 0;
};

// All shards of one split ("train" or "heldout") of a dha-tokenize directory,
// read as one token stream.
class TokenDataset {
 public:
  TokenDataset(const std::string& dir, const std::string& split);
  // An in-memory stream (e.g. calibration text tokenized on the fly); `name`
  // stands in for the directory in messages.
  TokenDataset(std::vector<int32_t> tokens, int64_t vocab_size, std::string name);
  // The split's shard files in a directory, sorted (empty if none).
  static std::vector<std::string> shard_paths(const std::string& dir, const std::string& split);
  int64_t size() const { return total_; }
  int64_t vocab_size() const { return vocab_; }
  const std::string& dir() const { return dir_; }
  void read(int64_t begin, int64_t n, int64_t* out) const;
  // The documents (split at BOS; each starts with BOS), at most `max_docs` (<= 0: all).
  std::vector<std::vector<int32_t>> documents(int32_t bos_id, int64_t max_docs) const;
  // Identifies the data for checkpoint compatibility checks.
  std::string fingerprint() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<TokenShard>> shards_;
  std::vector<int64_t> offsets_;  // start of each shard in the stream
  std::vector<int32_t> memory_;   // the in-memory stream, when there are no shards
  int64_t total_ = 0, vocab_ = 0;
};

// Where the sampler stands: the next sequence of the current epoch.
struct DataCursor {
  int64_t epoch = 0;
  int64_t index = 0;
};

// Packs the token stream into sequences of seq_len + 1 tokens (inputs and
// shifted targets), visited in a seeded random order per epoch. Deterministic
// from (seed, cursor), so a resumed run reads exactly what it would have read.
class SequenceSampler {
 public:
  SequenceSampler(const TokenDataset& data, int64_t seq_len, uint64_t seed);
  int64_t sequences_per_epoch() const { return n_sequences_; }

  // The batch of `count` sequences starting `offset` sequences after the
  // cursor (crossing into the next epoch when needed): int64 [count, seq_len + 1].
  torch::Tensor batch(const DataCursor& cursor, int64_t offset, int64_t count);
  // The cursor `count` sequences later.
  DataCursor advance(DataCursor cursor, int64_t count) const;

 private:
  const std::vector<int64_t>& order(int64_t epoch);
  const TokenDataset& data_;
  int64_t seq_len_, n_sequences_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace dha
