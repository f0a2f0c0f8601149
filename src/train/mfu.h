// Model FLOPs utilisation of a training run: the FLOPs a step's tokens cost
// and the peak dense bf16 FLOP/s of the GPUs we know, as one table.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "dha/config.h"
#include "dha/lookup.h"

namespace dha::train_detail {

// Peak dense bf16 FLOP/s by GPU: a row matches a device whose name contains the row's name.
const std::vector<Named<double>>& gpu_peak_flops();
// The peak of the first row that `device_name` contains; 0 when none does.
double peak_flops_of(const std::string& device_name);

// Training FLOPs per token: 6 per non-embedding weight plus the attention scores.
double training_flops_per_token(const ModelConfig& config, int64_t seq_len);

// The MFU of a run's steps on `world_size` devices like `device`.
class MfuMeter {
 public:
  MfuMeter(const torch::Device& device, const ModelConfig& config, int64_t seq_len, int world_size);
  // Of a step that trained `tokens_per_s` over all ranks; none on a device of unknown peak (a CPU).
  std::optional<double> mfu(double tokens_per_s) const;

 private:
  double peak_ = 0.0, flops_per_token_ = 0.0;
  int world_size_ = 1;
};

}  // namespace dha::train_detail
