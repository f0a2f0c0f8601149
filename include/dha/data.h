// Token shards and the deterministic, resumable sequence sampler shared by
// dha-train and the fusion stage of dha-convert.
//
// Shard file (.tok), version 2: a 64-byte header
//   magic "DHATOK\0\0" | u32 version (2) | u32 bytes per token (2 = uint16, 4 = uint32)
//   | u64 vocab size | u64 token count | u64 document count
//   | u32 how documents begin (0 BOS, 1 separator, 2 nothing: FirstToken) | i32 that token's id (-1: none)
//   | 16 reserved zero bytes
// then the tokens, little-endian, then the document index: one u64 per
// document, its first token's position in the shard (0 first, ascending).
// Each document is encode_document(tokenizer, text) (dha/eval.h), so it begins
// with the header's token; the index finds documents even when that token also
// occurs inside a text (a literal "<|endoftext|>"), or when there is none.
// Version 1 (still read): the same header with those 8 bytes zero and no index;
// every document starts with BOS and is found by splitting at BOS.
//
// Pre-tokenized data of other tools is read in place too, detected by content
// (src/data/foreign_shards.h): llm.c / nanoGPT .bin shards (no index: split at
// BOS like version 1; files named *val* are the held-out split) and Megatron-LM
// indexed datasets (PREFIX.bin + PREFIX.idx; documents from the index). They
// record no vocabulary: theirs is their largest id + 1, found on open, so a
// model too small for the data is refused before training starts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "dha/tokenizer.h"

namespace dha {

constexpr uint32_t kShardVersion = 2;
constexpr int64_t kShardHeaderBytes = 64;

// Writes a version-2 shard atomically (uint16 tokens when the vocab fits, else
// uint32). `document_starts`: each document's first position (0 first,
// ascending); every document must begin with protocol.token_id when it is >= 0.
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size,
                       const std::vector<int64_t>& document_starts, const DocumentProtocol& protocol);

class TokenShard {
 public:
  // Maps the file and validates the header against the file size (a foreign
  // format: its layout, and every token read once for the vocabulary).
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return count_; }
  int64_t vocab_size() const { return vocab_; }
  int64_t documents() const { return documents_; }
  int64_t bytes_per_token() const { return width_; }
  // dha's format version; 0 for a foreign format.
  uint32_t version() const { return version_; }
  // "dha", "llm.c" or "megatron".
  const std::string& format() const { return format_; }
  // Whether it indexes its documents (dha version 2, Megatron).
  bool indexed() const { return indexed_; }
  // How its documents begin; version 1: {kBos, -1} (BOS, whose id it does not
  // record); a foreign format: {kGiven, -1} (it records none).
  const DocumentProtocol& protocol() const { return protocol_; }
  // Document d's first position (indexed shards only).
  int64_t document_start(int64_t d) const;
  int64_t at(int64_t i) const;
  // Copies tokens [begin, begin + n) into out.
  void read(int64_t begin, int64_t n, int64_t* out) const;

 private:
  void open_foreign();
  int64_t read_foreign_token(const uint8_t* p) const;
  std::string path_, format_ = "dha";
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  int64_t data_offset_ = kShardHeaderBytes;
  int64_t width_ = 0, count_ = 0, vocab_ = 0, documents_ = 0;
  bool is_signed_ = false, indexed_ = false;
  std::vector<int64_t> starts_;  // a foreign format's document index
  uint32_t version_ = 0;
  DocumentProtocol protocol_;
};

// All shards of one split ("train" or "heldout") of a dha-tokenize directory
// (or of a directory of llm.c or Megatron-LM files), read as one token stream.
class TokenDataset {
 public:
  TokenDataset(const std::string& dir, const std::string& split);
  // An in-memory stream (e.g. calibration text tokenized on the fly); `name`
  // stands in for the directory in messages.
  TokenDataset(std::vector<int32_t> tokens, int64_t vocab_size, std::string name);
  // The split's shard files in a directory, sorted (empty if none): dha's
  // SPLIT-*.tok, else the foreign shards of that split.
  static std::vector<std::string> shard_paths(const std::string& dir, const std::string& split);
  int64_t size() const { return total_; }
  int64_t vocab_size() const { return vocab_; }
  const std::string& dir() const { return dir_; }
  void read(int64_t begin, int64_t n, int64_t* out) const;
  // The documents, each as encode_document gave it, at most `max_docs` (<= 0:
  // all): by the shards' index (version 2, Megatron); version-1 and llm.c
  // shards and an in-memory stream are split at `bos_id` (each document starts
  // with it: BOS, or llm.c's <|endoftext|> for GPT-2 data).
  std::vector<std::vector<int32_t>> documents(int32_t bos_id, int64_t max_docs) const;
  // How the documents begin (every shard of the split agrees); version-1 shards
  // and an in-memory stream: {kBos, -1}.
  const DocumentProtocol& protocol() const { return protocol_; }
  // The shards' format version (0 for an in-memory stream or foreign shards).
  uint32_t version() const { return version_; }
  // The shards' format ("dha", "llm.c", "megatron"; "memory" for an in-memory stream).
  const std::string& format() const { return format_; }
  // Identifies the data for checkpoint compatibility checks.
  std::string fingerprint() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<TokenShard>> shards_;
  std::vector<int64_t> offsets_;  // start of each shard in the stream
  std::vector<int32_t> memory_;   // the in-memory stream, when there are no shards
  int64_t total_ = 0, vocab_ = 0;
  uint32_t version_ = 0;
  std::string format_ = "memory";
  bool indexed_ = false;
  DocumentProtocol protocol_;
};

// Where the sampler stands: the next sequence of the current epoch.
struct DataCursor {
  int64_t epoch = 0;
  int64_t index = 0;
};

// One source of a mixture and its weight (any positive scale: weights are normalised).
struct MixtureSource {
  const TokenDataset* data = nullptr;
  double weight = 1.0;
};

// Where one source of a mixture stands at a cursor: the sequences it has given,
// and the position in its own order they reach (its epoch and index).
struct SourcePosition {
  int64_t sequences = 0, epoch = 0, index = 0;
};

// Sequences of a mixture's period: each source's share of every period is its
// weight's, rounded by largest remainder (so a share is exact to 1e-4).
constexpr int64_t kMixturePeriod = 10000;

// Packs the token stream into sequences of seq_len + 1 tokens (inputs and
// shifted targets), visited in a seeded random order per epoch. Deterministic
// from (seed, cursor), so a resumed run reads exactly what it would have read.
//
// A mixture of sources: every period of kMixturePeriod sequences holds each
// source's share, interleaved evenly (smooth weighted round robin, fixed for
// the weights); each source is read in its own seeded order through its own
// epochs (the first source's seed is the sampler's, so a one-source mixture is
// the one-source sampler). The cursor then counts periods (epoch) and the
// position in the period (index); every source's position follows from it.
class SequenceSampler {
 public:
  SequenceSampler(const TokenDataset& data, int64_t seq_len, uint64_t seed);
  SequenceSampler(const std::vector<MixtureSource>& sources, int64_t seq_len, uint64_t seed);
  // Sequences per epoch: the data's, or a mixture's period.
  int64_t sequences_per_epoch() const { return n_sequences_; }
  int64_t source_count() const { return static_cast<int64_t>(sources_.size()); }
  // A source's sequences per period (a single source: per epoch).
  int64_t source_share(int64_t source) const { return sources_.at(source).share; }

  // The batch of `count` sequences starting `offset` sequences after the
  // cursor (crossing into the next epoch when needed): int64 [count, seq_len + 1].
  torch::Tensor batch(const DataCursor& cursor, int64_t offset, int64_t count);
  // The cursor `count` sequences later.
  DataCursor advance(DataCursor cursor, int64_t count) const;
  // Where each source stands at `cursor`.
  std::vector<SourcePosition> positions(const DataCursor& cursor) const;

 private:
  struct Source {
    Source(const TokenDataset* data, int64_t n_sequences, uint64_t seed, int64_t share)
        : data(data), n_sequences(n_sequences), seed(seed), share(share) {}
    const TokenDataset* data;
    int64_t n_sequences;
    uint64_t seed;
    int64_t share;  // sequences per period
    int64_t cached_epoch = -1;
    std::vector<int64_t> order;
  };
  const std::vector<int64_t>& order(Source& source, int64_t epoch);
  std::vector<Source> sources_;
  std::vector<int32_t> pattern_;  // a mixture's period: the source of each position
  std::vector<int64_t> rank_;     // ... and how many of that source's sequences precede it in the period
  int64_t seq_len_, n_sequences_;
};

}  // namespace dha
