// Shared by the attention benchmarks: options, head layouts, device timing and
// the SDPA baselines every kernel family is compared with.
#pragma once

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace dha::bench {

// "--name value" pairs; every option has a default.
class Options {
 public:
  Options(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      const std::string key = argv[i];
      if (key == "--help" || key == "-h") {
        help_ = true;
        continue;
      }
      if (key.rfind("--", 0) != 0 || i + 1 >= argc)
        throw std::invalid_argument("expected --name value pairs, got '" + key + "'");
      values_[key.substr(2)] = argv[++i];
    }
  }
  bool help() const { return help_; }
  int64_t integer(const std::string& name, int64_t fallback) const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : std::stoll(it->second);
  }
  std::vector<int64_t> integers(const std::string& name, std::vector<int64_t> fallback) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    std::vector<int64_t> out;
    size_t start = 0;
    const std::string& s = it->second;
    while (start <= s.size()) {
      const size_t comma = std::min(s.find(',', start), s.size());
      out.push_back(std::stoll(s.substr(start, comma - start)));
      start = comma + 1;
    }
    return out;
  }
  std::string text(const std::string& name, const std::string& fallback) const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }

 private:
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

inline torch::ScalarType dtype_of(const std::string& name) {
  if (name == "bf16") return torch::kBFloat16;
  if (name == "fp16") return torch::kHalf;
  throw std::invalid_argument("--dtype must be bf16 or fp16, got '" + name + "'");
}

// Query head i reads key head k_map[i] and value head v_map[i]: unequal,
// non-contiguous groups (every head used), fixed by the seed.
inline torch::Tensor random_onto(int64_t heads, int64_t groups, std::mt19937& rng,
                                 const torch::Device& device) {
  std::vector<int64_t> map(heads);
  for (int64_t i = 0; i < heads; ++i) map[i] = i < groups ? i : static_cast<int64_t>(rng() % groups);
  std::shuffle(map.begin(), map.end(), rng);
  return torch::tensor(map, torch::kInt64).to(device);
}

// GQA with the DHA layout's KV budget (H_K + H_V heads): the group count g with
// 2 g <= budget that divides H, as large as possible.
inline int64_t gqa_groups(int64_t heads, int64_t k_heads, int64_t v_heads) {
  for (int64_t g = std::min(heads, (k_heads + v_heads) / 2); g >= 1; --g)
    if (heads % g == 0) return g;
  return 1;
}

// Median over `repeats` of the mean time of `iters` calls, device synchronised
// around each timed block (host clock), after `warmup` calls.
template <typename Fn>
double median_ms(Fn&& fn, int warmup, int iters, int repeats) {
  for (int i = 0; i < warmup; ++i) fn();
  torch::cuda::synchronize();
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) fn();
    torch::cuda::synchronize();
    const auto t1 = std::chrono::steady_clock::now();
    times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / iters);
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

// Device-to-device copy bandwidth (bytes read + written), the decode ceiling.
inline double copy_gbps(const torch::Device& device) {
  const torch::Tensor a = torch::randn({256 << 20}, torch::TensorOptions().device(device));  // 1 GiB
  torch::Tensor b = torch::empty_like(a);
  const double ms = median_ms([&] { b.copy_(a); }, 3, 10, 5);
  return 2.0 * a.numel() * 4 / (ms * 1e6);
}

// The head layout every benchmark times, from --heads, --k-heads, --v-heads,
// --dim, --dtype and --seed: random unequal maps on the CUDA device, and the
// GQA group count with the same KV budget.
struct HeadSetup {
  int64_t h = 0, h_k = 0, h_v = 0, d = 0, g = 0;
  std::string dtype_name;
  torch::TensorOptions options;
  torch::Tensor k_map, v_map;
};

inline HeadSetup head_setup(const Options& o) {
  HeadSetup s;
  s.h = o.integer("heads", 32);
  s.h_k = o.integer("k-heads", 8);
  s.h_v = o.integer("v-heads", 12);
  s.d = o.integer("dim", 128);
  s.dtype_name = o.text("dtype", "bf16");
  s.options = torch::TensorOptions().device(torch::kCUDA).dtype(dtype_of(s.dtype_name));
  std::mt19937 rng(static_cast<unsigned>(o.integer("seed", 0)));
  torch::manual_seed(o.integer("seed", 0));
  s.k_map = random_onto(s.h, s.h_k, rng, torch::kCUDA);
  s.v_map = random_onto(s.h, s.h_v, rng, torch::kCUDA);
  s.g = gqa_groups(s.h, s.h_k, s.h_v);
  return s;
}

inline bool require_cuda(const char* program) {
  if (torch::cuda::is_available()) return true;
  std::printf("%s: needs a CUDA device (none found); nothing timed\n", program);
  return false;
}

}  // namespace dha::bench
