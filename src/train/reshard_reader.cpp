// Reading a sharded checkpoint onto this world size.
#include "reshard_reader.h"

#include <set>

#include "dha/error.h"
#include "dha/io/safetensors.h"
#include "shard_layout.h"

namespace dha::train_detail {

ReshardReader::ReshardReader(const TrainingState& state, const nlohmann::json& units, int rank, int world)
    : state_(state), rank_(rank), world_(world) {
  if (state.zero.is_null()) fail(state.path, ": a replicated (--zero 0) checkpoint; resume it with --zero 0");
  if (state.zero.at("units") != units)
    fail(state.path,
         ": the checkpoint's shards hold other parameters than this run trains (another model or task?)");
  old_world_ = state.zero.at("world_size").get<int>();
  if (static_cast<int>(state.shard_files.size()) != old_world_)
    fail(state.path, ": state.json lists ", state.shard_files.size(), " shard files for ", old_world_,
         " ranks");
  for (const auto& unit : units) numels_.push_back(unit.at("numel").get<int64_t>());
}

ReshardReader::~ReshardReader() = default;

io::SafetensorsFile& ReshardReader::file(int old_rank) {
  auto& f = files_[old_rank];
  if (!f) f = std::make_unique<io::SafetensorsFile>(state_.shard_files[old_rank]);
  return *f;
}

void ReshardReader::read(size_t unit, const std::string& part, torch::Tensor& target) {
  const int64_t numel = numels_.at(unit), old_shard = shard_size(numel, old_world_);
  const OwnedRange mine = owned_range(numel, rank_, world_);
  const std::string key = shard_tensor_name(unit, part);
  target.zero_();  // the padding past the unit's end
  for (int64_t pos = mine.begin; pos < mine.end;) {
    const int old_rank = static_cast<int>(pos / old_shard);
    const int64_t within = pos % old_shard, length = std::min(mine.end - pos, old_shard - within);
    io::SafetensorsFile& f = file(old_rank);
    if (!f.contains(key)) fail(f.path(), ": shard tensor '", key, "' is missing");
    const torch::Tensor source = f.mapped_tensor(key);
    if (source.numel() != old_shard)
      fail(f.path(), ": shard tensor '", key, "' has ", source.numel(), " elements, expected ", old_shard);
    target.narrow(0, pos - mine.begin, length).copy_(source.narrow(0, within, length));
    pos += length;
  }
}

std::vector<int> shards_to_read(const nlohmann::json& zero, int rank, int world) {
  const int old_world = zero.at("world_size").get<int>();
  std::set<int> ranks;
  for (const auto& unit : zero.at("units")) {
    const int64_t numel = unit.at("numel").get<int64_t>(), old_shard = shard_size(numel, old_world);
    const OwnedRange mine = owned_range(numel, rank, world);
    for (int64_t pos = mine.begin; pos < mine.end; pos += old_shard - pos % old_shard)
      ranks.insert(static_cast<int>(pos / old_shard));
  }
  return {ranks.begin(), ranks.end()};
}

}  // namespace dha::train_detail
