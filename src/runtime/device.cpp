// Device resolution for every tool and stage.
#include "dha/device.h"

#include <torch/cuda.h>

#include "dha/error.h"

namespace dha {

torch::Device resolve_device(const std::string& name, int local_rank) {
  if (name == "cpu") return torch::kCPU;
  const bool cuda = torch::cuda::is_available();
  if (name == "cuda" && !cuda) fail("--device cuda: no CUDA device is visible");
  if (name == "cuda" || (name == "auto" && cuda))
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % torch::cuda::device_count()));
  if (name != "auto") fail("--device \"", name, "\" is not one of auto, cpu, cuda");
  return torch::kCPU;
}

}  // namespace dha
