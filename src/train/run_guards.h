// Private to the training loop: the scoped guards of a run — stop-signal
// handlers for its duration, and bf16 autocast on CUDA around its forward passes.
#pragma once

#include <csignal>

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

}  // namespace dha::train_detail
