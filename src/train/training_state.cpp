// Training state on disk: staged checkpoint directories of checksummed safetensors.
#include "dha/training_state.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/safetensors.h"
#include "dha/log.h"

namespace dha {
namespace fs = std::filesystem;
namespace {

constexpr int kFormatVersion = 1;

io::NamedTensors named(const TensorMap& tensors) {
  io::NamedTensors out;
  for (const auto& [name, t] : tensors) out.emplace_back(name, t.detach().to(torch::kCPU));
  return out;
}

TensorMap read_all(const std::string& path) {
  io::SafetensorsFile file(path);
  TensorMap out;
  for (const auto& name : file.names()) out[name] = file.tensor(name);
  return out;
}

std::vector<std::pair<int64_t, std::string>> step_dirs(const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> dirs;
  if (!fs::is_directory(root)) return dirs;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    long long step = 0;
    char tail = 0;
    if (entry.is_directory() && std::sscanf(name.c_str(), "step-%lld%c", &step, &tail) == 1)
      dirs.emplace_back(step, entry.path().string());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::string step_name(int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step-%09lld", static_cast<long long>(step));
  return name;
}

std::string shard_file_name(int rank, int world) {
  char name[64];
  std::snprintf(name, sizeof(name), "rank-%05d-of-%05d.safetensors", rank, world);
  return name;
}

void verify(const std::string& dir, const nlohmann::json& checksums, const std::string& file) {
  const std::string expected = checksums.value(file, "");
  const std::string actual = file_checksum(dir + "/" + file);
  if (expected != actual)
    fail(dir, "/", file, ": checksum ", actual, " does not match state.json's ", expected, " (damaged checkpoint)");
}

// state.json, the directory's manifest (written last): the position, the checksums, the trainer's records.
nlohmann::json state_json(const TrainingState& state, int world_size, const nlohmann::json& checksums) {
  nlohmann::json out = {{"format_version", kFormatVersion},
                        {"step", state.step},
                        {"tokens", state.tokens},
                        {"cursor", {{"epoch", state.cursor.epoch}, {"index", state.cursor.index}}},
                        {"world_size", world_size},
                        {"checksums", checksums},
                        {"meta", state.meta}};
  if (!state.zero.is_null()) out["zero"] = state.zero;
  return out;
}

void prune(const std::string& root, int keep) {
  if (keep <= 0) return;
  std::error_code error;
  const auto dirs = step_dirs(root);
  for (size_t i = 0; i + keep < dirs.size(); ++i) fs::remove_all(dirs[i].second, error);
}

// state.json and the files every rank reads; the shards are verified by whoever reads them.
TrainingState read_checkpoint(const std::string& dir) {
  const std::string state_path = dir + "/state.json";
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(io::read_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    fail(state_path, ": not valid JSON (", e.what(), ")");
  }
  if (state.value("format_version", 0) != kFormatVersion)
    fail(state_path, ": checkpoint format version ", state.value("format_version", 0), " is not ", kFormatVersion);
  const nlohmann::json& checksums = state.at("checksums");
  const bool sharded = state.contains("zero") && !state["zero"].is_null();
  verify(dir, checksums, "tensors.safetensors");
  if (!sharded) verify(dir, checksums, "optimizer.safetensors");
  TrainingState ck;
  ck.path = dir;
  ck.step = state.at("step").get<int64_t>();
  ck.tokens = state.at("tokens").get<int64_t>();
  ck.cursor.epoch = state.at("cursor").at("epoch").get<int64_t>();
  ck.cursor.index = state.at("cursor").at("index").get<int64_t>();
  ck.world_size = state.at("world_size").get<int>();
  ck.meta = state.at("meta");
  ck.tensors = read_all(dir + "/tensors.safetensors");
  if (sharded) {
    ck.zero = state["zero"];
    const int world = ck.zero.at("world_size").get<int>();
    for (int r = 0; r < world; ++r) ck.shard_files.push_back(dir + "/" + shard_file_name(r, world));
  } else {
    ck.optimizer = read_all(dir + "/optimizer.safetensors");
  }
  return ck;
}

void verify_shards(const TrainingState& ck, const std::vector<int>& ranks) {
  const nlohmann::json state = nlohmann::json::parse(io::read_file(ck.path + "/state.json"));
  for (const int r : ranks) {
    if (r < 0 || r >= static_cast<int>(ck.shard_files.size())) fail(ck.path, ": no shard file for rank ", r);
    verify(ck.path, state.at("checksums"), fs::path(ck.shard_files[r]).filename().string());
  }
}

}  // namespace

std::string file_checksum(const std::string& path) {
  // FNV-1a over the file, read in blocks: a checkpoint's optimizer state can
  // be larger than the memory left beside the model.
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open for reading (to checksum it)");
  std::vector<char> block(1 << 20);
  uint64_t hash = 1469598103934665603ull;
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const std::streamsize n = in.gcount();
    for (std::streamsize i = 0; i < n; ++i) {
      hash ^= static_cast<unsigned char>(block[static_cast<size_t>(i)]);
      hash *= 1099511628211ull;
    }
  }
  if (in.bad()) fail(path, ": read failed while checksumming it");
  char out[17];
  std::snprintf(out, sizeof(out), "%016llx", static_cast<unsigned long long>(hash));
  return out;
}

std::string save_training_state(const std::string& root, const TrainingState& ck, int keep) {
  std::error_code error;
  fs::create_directories(root, error);
  if (error) fail(root, ": cannot create the checkpoint directory (", error.message(), ")");
  const std::string target = root + "/" + step_name(ck.step);
  {
    io::StagedDirectory staged(target, /*overwrite=*/true);
    io::save_safetensors(staged.file("tensors.safetensors"), named(ck.tensors));
    io::save_safetensors(staged.file("optimizer.safetensors"), named(ck.optimizer));
    const nlohmann::json checksums = {
        {"tensors.safetensors", file_checksum(staged.file("tensors.safetensors"))},
        {"optimizer.safetensors", file_checksum(staged.file("optimizer.safetensors"))}};
    io::write_file_atomic(staged.file("state.json"), state_json(ck, ck.world_size, checksums).dump(2) + "\n");
    staged.commit();
  }
  prune(root, keep);
  return target;
}

std::string save_sharded_training_state(const std::string& root, const TrainingState& ck,
                                          const TensorMap& shard_tensors, Distributed& dist, int keep) {
  const int world = dist.world_size(), rank = dist.rank();
  const std::string target = root + "/" + step_name(ck.step);
  // Not "step-*": a directory a killed run leaves behind is never taken for a checkpoint.
  const std::string staging = root + "/." + step_name(ck.step) + ".partial";
  std::error_code error;
  if (dist.is_main()) {
    fs::create_directories(root, error);
    if (error) fail(root, ": cannot create the checkpoint directory (", error.message(), ")");
    fs::remove_all(staging, error);
    fs::create_directories(staging, error);
    if (error) fail(staging, ": cannot create the staging directory (", error.message(), ")");
  }
  dist.barrier();
  const std::string mine = shard_file_name(rank, world);
  io::save_safetensors(staging + "/" + mine, named(shard_tensors));
  // Every rank's checksum to every rank, as two exact 32-bit halves per rank.
  std::vector<double> halves(2 * world, 0.0);
  const uint64_t sum = std::stoull(file_checksum(staging + "/" + mine), nullptr, 16);
  halves[2 * rank] = static_cast<double>(sum >> 32);
  halves[2 * rank + 1] = static_cast<double>(sum & 0xffffffffull);
  halves = dist.sum(halves);  // also: every shard is written once this returns
  if (dist.is_main()) {
    io::save_safetensors(staging + "/tensors.safetensors", named(ck.tensors));
    nlohmann::json checksums = {{"tensors.safetensors", file_checksum(staging + "/tensors.safetensors")}};
    for (int r = 0; r < world; ++r) {
      char hex[17];
      const uint64_t value = (static_cast<uint64_t>(halves[2 * r]) << 32) | static_cast<uint64_t>(halves[2 * r + 1]);
      std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(value));
      checksums[shard_file_name(r, world)] = hex;
    }
    // The manifest last: until it exists the directory is not a checkpoint.
    io::write_file_atomic(staging + "/state.json", state_json(ck, world, checksums).dump(2) + "\n");
    fs::remove_all(target, error);
    fs::rename(staging, target, error);
    if (error) fail(target, ": cannot move the staged checkpoint into place (", error.message(), ")");
    prune(root, keep);
    // What a killed run left staging (never a checkpoint: no manifest was renamed into place).
    std::vector<fs::path> leftovers;
    for (const auto& entry : fs::directory_iterator(root, error)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(".step-", 0) == 0 && name.size() > 8 && name.compare(name.size() - 8, 8, ".partial") == 0)
        leftovers.push_back(entry.path());
    }
    for (const auto& path : leftovers) fs::remove_all(path, error);
  }
  dist.barrier();
  return target;
}

std::optional<TrainingState> load_latest_training_state(const std::string& root) {
  auto dirs = step_dirs(root);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    try {
      TrainingState ck = read_checkpoint(it->second);
      std::vector<int> all(ck.shard_files.size());
      for (size_t r = 0; r < all.size(); ++r) all[r] = static_cast<int>(r);
      verify_shards(ck, all);
      return ck;
    } catch (const std::exception& e) {
      log::warn("skipping checkpoint ", it->second, ": ", e.what());
    }
  }
  return std::nullopt;
}

std::optional<TrainingState> load_latest_training_state(
    const std::string& root, Distributed& dist,
    const std::function<std::vector<int>(const TrainingState&)>& shards_needed) {
  auto dirs = step_dirs(root);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    std::optional<TrainingState> ck;
    std::string problem;
    try {
      ck = read_checkpoint(it->second);
      if (!ck->zero.is_null()) verify_shards(*ck, shards_needed(*ck));
    } catch (const std::exception& e) {
      problem = e.what();
    }
    // Taken only if every rank could read its part of it.
    const bool damaged_somewhere = dist.max(problem.empty() ? 0.0 : 1.0) > 0;
    if (!damaged_somewhere) return ck;
    if (!problem.empty()) log::warn("skipping checkpoint ", it->second, ": ", problem);
    else if (dist.is_main()) log::warn("skipping checkpoint ", it->second, ": another rank found it damaged");
  }
  return std::nullopt;
}

}  // namespace dha
