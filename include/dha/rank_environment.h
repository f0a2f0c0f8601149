// A process's place in a data-parallel run, read once from the env://
// variables torchrun and Slurm set (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT, and torchrun's agent-store pair). Every tool, the conversion,
// training and the device choice read this one parsed value.
#pragma once

#include <functional>
#include <string>

#include <torch/types.h>

namespace dha {

struct RankEnvironment {
  int rank = 0;
  int local_rank = 0;  // the GPU this process uses on its node
  int world_size = 1;
  std::string master_addr;  // empty: none given
  int master_port = -1;     // -1: none given
  bool agent_store = false;         // torchrun's agent serves the rendezvous store
  std::string restart_count = "0";  // torchrun's restart attempt (the store's key prefix)

  bool is_main() const { return rank == 0; }

  // From the process environment; an unparsable or inconsistent value is an
  // error naming the variable (RANK outside [0, WORLD_SIZE), LOCAL_RANK < 0).
  static RankEnvironment from_env();
  // The same from any lookup (tests); `lookup` returns null for an unset name.
  static RankEnvironment from(const std::function<const char*(const char*)>& lookup);
};

// What the machine has, as resolve_device sees it (tests pass their own).
struct DeviceInventory {
  bool cuda_available = false;
  int cuda_devices = 0;
  static DeviceInventory current();
};

// The device a run asks for: "cpu", "cuda" (an error when none is visible)
// or "auto" (CUDA when available). On CUDA the rank's local_rank picks the
// GPU (modulo the visible count, for one process per node given every GPU).
torch::Device resolve_device(const std::string& name, const RankEnvironment& env,
                             const DeviceInventory& inventory = DeviceInventory::current());

}  // namespace dha
