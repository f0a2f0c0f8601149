// Training checkpoints: staged directories with checksummed safetensors.
#include "dha/train_checkpoint.h"


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

TrainCheckpoint read_checkpoint(const std::string& dir) {
  const std::string state_path = dir + "/state.json";
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(io::read_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    fail(state_path, ": not valid JSON (", e.what(), ")");
  }
  if (state.value("format_version", 0) != kFormatVersion)
    fail(state_path, ": checkpoint format version ", state.value("format_version", 0), " is not ", kFormatVersion);
  for (const char* file : {"tensors.safetensors", "optimizer.safetensors"}) {
    const std::string expected = state.at("checksums").value(file, "");
    const std::string actual = file_checksum(dir + "/" + file);
    if (expected != actual)
      fail(dir, "/", file, ": checksum ", actual, " does not match state.json's ", expected, " (damaged checkpoint)");
  }
  TrainCheckpoint ck;
  ck.path = dir;
  ck.step = state.at("step").get<int64_t>();
  ck.tokens = state.at("tokens").get<int64_t>();
  ck.cursor.epoch = state.at("cursor").at("epoch").get<int64_t>();
  ck.cursor.index = state.at("cursor").at("index").get<int64_t>();
  ck.world_size = state.at("world_size").get<int>();
  ck.meta = state.at("meta");
  ck.tensors = read_all(dir + "/tensors.safetensors");
  ck.optimizer = read_all(dir + "/optimizer.safetensors");
  return ck;
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

std::string save_train_checkpoint(const std::string& root, const TrainCheckpoint& ck, int keep) {
  std::error_code error;
  fs::create_directories(root, error);
  if (error) fail(root, ": cannot create the checkpoint directory (", error.message(), ")");
  char name[64];
  std::snprintf(name, sizeof(name), "step-%09lld", static_cast<long long>(ck.step));
  const std::string target = root + "/" + name;
  {
    io::StagedDirectory staged(target, /*overwrite=*/true);
    io::save_safetensors(staged.file("tensors.safetensors"), named(ck.tensors));
    io::save_safetensors(staged.file("optimizer.safetensors"), named(ck.optimizer));
    const nlohmann::json state = {
        {"format_version", kFormatVersion},
        {"step", ck.step},
        {"tokens", ck.tokens},
        {"cursor", {{"epoch", ck.cursor.epoch}, {"index", ck.cursor.index}}},
        {"world_size", ck.world_size},
        {"checksums",
         {{"tensors.safetensors", file_checksum(staged.file("tensors.safetensors"))},
          {"optimizer.safetensors", file_checksum(staged.file("optimizer.safetensors"))}}},
        {"meta", ck.meta}};
    io::write_file_atomic(staged.file("state.json"), state.dump(2) + "\n");
    staged.commit();
  }
  if (keep > 0) {
    const auto dirs = step_dirs(root);
    for (size_t i = 0; i + keep < dirs.size(); ++i) fs::remove_all(dirs[i].second, error);
  }
  return target;
}

std::optional<TrainCheckpoint> load_latest_train_checkpoint(const std::string& root) {
  auto dirs = step_dirs(root);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    try {
      return read_checkpoint(it->second);
    } catch (const std::exception& e) {
      log::warn("skipping checkpoint ", it->second, ": ", e.what());
    }
  }
  return std::nullopt;
}

}  // namespace dha
