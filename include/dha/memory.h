// Memory accounting for the memory plan: the bytes LibTorch's CPU allocator has
// handed out (current and peak, counted by a wrapper around it), the CUDA
// caching allocator's peak, and the process's peak resident set.
#pragma once

#include <cstdint>

#include <torch/types.h>

namespace dha {

class MemoryMeter {
 public:
  // Routes LibTorch's CPU allocations through the counter, once per process
  // (later calls do nothing). Tensors allocated before keep their own deleter
  // and are not counted.
  static void install();
  static bool installed();
  // Bytes of live CPU tensor storage allocated since install(), and their peak.
  static int64_t current_bytes();
  static int64_t peak_bytes();
  // Starts a new peak at the current level (for one stage's own peak).
  static void reset_peak();
};

// Peak resident set of this process so far (getrusage), in bytes.
int64_t peak_rss_bytes();
// Current resident set (/proc/self/statm), in bytes; 0 where unavailable.
int64_t current_rss_bytes();
// Peak bytes the CUDA caching allocator handed out on `device` since the last
// reset_device_peak(); 0 for a CPU device.
int64_t device_peak_bytes(const torch::Device& device);
void reset_device_peak(const torch::Device& device);

}  // namespace dha
