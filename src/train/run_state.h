// Private to the training loop: what a run carries besides the model and the
// optimizer — stop signals, bf16 autocast on CUDA, and the RNG state a
// checkpoint records so that a resumed run continues exactly.
#pragma once

#include <csignal>

#include <nlohmann/json.hpp>
#include <torch/types.h>

namespace dha::train_detail {

// Installs SIGINT/SIGTERM handlers for the duration of a run.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  bool raised() const;

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

// bf16 autocast on CUDA (fp32 master weights stay in the optimizer); nothing on CPU.
class Autocast {
 public:
  explicit Autocast(const torch::Device& device);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  bool enabled_;
};

nlohmann::json rng_state();
void restore_rng_state(const nlohmann::json& j);

}  // namespace dha::train_detail
