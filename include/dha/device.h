// Which device a run uses: shared by every tool, the conversion and training.
#pragma once

#include <string>

#include <torch/types.h>

namespace dha {

// The device a config asks for: "cpu", "cuda" (an error when none is visible)
// or "auto" (CUDA when available). On CUDA, local_rank picks the GPU.
torch::Device resolve_device(const std::string& name, int local_rank);

}  // namespace dha
