// The layout of ZeRO-sharded training state, one rule for the sharder that
// packs it, the checkpoints that store it and the reader that re-shards them:
// every trained tensor is its own flat fp32 unit padded to shard * world
// elements, and rank r owns elements [r * shard, (r + 1) * shard) of each.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

namespace dha::train_detail {

// Elements per rank of a unit of `numel` elements.
inline int64_t shard_size(int64_t numel, int world) { return (numel + world - 1) / world; }

// The elements of a unit that rank `rank` of `world` owns, the padding left out (empty past the end).
struct OwnedRange {
  int64_t begin = 0, end = 0;
};
inline OwnedRange owned_range(int64_t numel, int rank, int world) {
  const int64_t shard = shard_size(numel, world), begin = rank * shard;
  return {begin, std::min(begin + shard, numel)};
}

// A rank's slice of unit `unit` in its shard file: "unit.<i>.weights", ".exp_avg" or ".exp_avg_sq".
inline std::string shard_tensor_name(size_t unit, const std::string& part) {
  return "unit." + std::to_string(unit) + "." + part;
}

}  // namespace dha::train_detail
