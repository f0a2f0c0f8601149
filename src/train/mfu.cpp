// The peak-FLOPs table and the MFU of a training step.
#include "mfu.h"

#if __has_include(<ATen/cuda/CUDAContext.h>)
#include <ATen/cuda/CUDAContext.h>
#define DHA_HAVE_ATEN_CUDA 1
#endif

namespace dha::train_detail {

const std::vector<Named<double>>& gpu_peak_flops() {
  static const std::vector<Named<double>> table = {
      {989e12, "H100", "NVIDIA H100 SXM, dense bf16"},
      {989e12, "H200", "NVIDIA H200, dense bf16 (the H100's tensor cores)"},
      {312e12, "A100", "NVIDIA A100, dense bf16"},
      {181e12, "L40", "NVIDIA L40 / L40S, dense bf16"},
  };
  return table;
}

double peak_flops_of(const std::string& device_name) {
  for (const auto& row : gpu_peak_flops())
    if (device_name.find(row.name) != std::string::npos) return row.value;
  return 0.0;
}

double training_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  const double weights = static_cast<double>(c.parameter_count() - c.vocab_size * c.dim);
  return 6.0 * weights + 6.0 * c.n_layers * c.n_heads * c.head_dim * seq_len;
}

MfuMeter::MfuMeter(const torch::Device& device, const ModelConfig& config, int64_t seq_len, int world_size)
    : flops_per_token_(training_flops_per_token(config, seq_len)), world_size_(world_size) {
#ifdef DHA_HAVE_ATEN_CUDA
  if (device.is_cuda()) peak_ = peak_flops_of(at::cuda::getDeviceProperties(device.index())->name);
#endif
}

std::optional<double> MfuMeter::mfu(double tokens_per_s) const {
  if (peak_ <= 0) return std::nullopt;
  return tokens_per_s * flops_per_token_ / (peak_ * world_size_);
}

}  // namespace dha::train_detail
