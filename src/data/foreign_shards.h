// Pre-tokenized data written by other tools, read in place by TokenShard
// (dha/data.h): a row per format (foreign_shards.cpp), detected by content.
//   llm.c / nanoGPT .bin: a 256-int32 header (magic 20240520, version 1 =
//     uint16 tokens or 2 = uint32, token count), then the tokens; no index:
//     documents are found by the token every document begins with.
//   Megatron-LM indexed dataset: PREFIX.bin (the tokens, no header) and
//     PREFIX.idx ("MMIDIDX\0\0", version 1, dtype code, sequence and document
//     counts, int32 sequence lengths, int64 byte pointers, int64 document
//     indices): documents from the index.
// Private to src/data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dha {

struct ForeignShardLayout {
  const char* format = "";
  int64_t data_offset = 0;  // where the tokens start in the mapped file
  int64_t width = 0;        // bytes per token
  bool is_signed = false;
  int64_t count = 0;        // tokens
  bool indexed = false;     // `starts` holds every document's first position
  std::vector<int64_t> starts;
};

// The layout of the mapped file at `path` when it is one of the foreign
// formats (throws, naming the field, when it claims to be one and is not
// consistent); false when it is none of them.
bool parse_foreign_shard(const std::string& path, const uint8_t* map, size_t size, ForeignShardLayout& layout);

// Which foreign format a file is, by content ("llm.c", "megatron", or "" for none).
std::string foreign_shard_format(const std::string& path);

// The foreign shards of a directory for a split ("train" or "heldout"), sorted:
// llm.c files whose name holds "val" are held out, the others train; every
// Megatron dataset (.bin with its .idx) trains.
std::vector<std::string> foreign_shard_paths(const std::string& dir, const std::string& split);

}  // namespace dha
