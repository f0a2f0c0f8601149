// The env:// variables parsed once, and the device they pick.
#include "dha/rank_environment.h"

#include <cstdlib>

#include <torch/cuda.h>

#include "dha/error.h"
#include "dha/lookup.h"

namespace dha {
namespace {

int parse_int(const char* name, const char* value, int fallback) {
  if (!value || !*value) return fallback;
  const std::string text = value;
  try {
    size_t used = 0;
    const int parsed = std::stoi(text, &used);
    if (used == text.size()) return parsed;
  } catch (const std::exception&) {
  }
  fail("environment variable ", name, "=\"", text, "\" is not an integer");
}

}  // namespace

RankEnvironment RankEnvironment::from(const std::function<const char*(const char*)>& lookup) {
  RankEnvironment env;
  env.world_size = parse_int("WORLD_SIZE", lookup("WORLD_SIZE"), 1);
  env.rank = parse_int("RANK", lookup("RANK"), 0);
  env.local_rank = parse_int("LOCAL_RANK", lookup("LOCAL_RANK"), 0);
  if (env.world_size < 1 || env.rank < 0 || env.rank >= env.world_size)
    fail("RANK=", env.rank, " and WORLD_SIZE=", env.world_size, " are inconsistent (need 0 <= RANK < WORLD_SIZE)");
  if (env.local_rank < 0) fail("environment variable LOCAL_RANK=", env.local_rank, " must not be negative");
  if (const char* addr = lookup("MASTER_ADDR")) env.master_addr = addr;
  env.master_port = parse_int("MASTER_PORT", lookup("MASTER_PORT"), -1);
  const char* agent = lookup("TORCHELASTIC_USE_AGENT_STORE");
  env.agent_store = agent && std::string(agent) == "True";
  if (const char* restarts = lookup("TORCHELASTIC_RESTART_COUNT"); restarts && *restarts) env.restart_count = restarts;
  return env;
}

RankEnvironment RankEnvironment::from_env() {
  return from([](const char* name) -> const char* { return std::getenv(name); });
}

DeviceInventory DeviceInventory::current() {
  DeviceInventory inventory;
  inventory.cuda_available = torch::cuda::is_available();
  inventory.cuda_devices = inventory.cuda_available ? static_cast<int>(torch::cuda::device_count()) : 0;
  return inventory;
}

torch::Device resolve_device(const std::string& name, const RankEnvironment& env, const DeviceInventory& inventory) {
  enum class Choice { kAuto, kCpu, kCuda };
  static const std::vector<Named<Choice>> kChoices = {
      {Choice::kAuto, "auto", "CUDA when available"}, {Choice::kCpu, "cpu", ""}, {Choice::kCuda, "cuda", ""}};
  const Choice choice = parse_named(kChoices, name, "--device");
  if (choice == Choice::kCpu) return torch::kCPU;
  const bool cuda = inventory.cuda_available && inventory.cuda_devices > 0;
  if (choice == Choice::kCuda && !cuda) fail("--device cuda: no CUDA device is visible");
  if (!cuda) return torch::kCPU;
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank % inventory.cuda_devices));
}

}  // namespace dha
