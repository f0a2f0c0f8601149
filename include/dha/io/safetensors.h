// safetensors reader (memory-mapped, every header field bounds-checked) and
// writer (atomic). Supported dtypes: F32, F16, BF16.
//
// File layout: u64 little-endian N | N bytes of JSON header | data.
// Header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
//          "__metadata__": {"k": "v"}}; offsets are relative to the data start.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "dha/io/mapped_region.h"

namespace dha::io {

struct SafetensorsEntry {
  std::string name;
  torch::ScalarType dtype;      // kFloat, kHalf or kBFloat16
  std::vector<int64_t> shape;
  uint64_t begin = 0;           // byte offsets relative to the data section
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps the file and validates the whole header; throws dha::Error naming the
  // file and the offending field on anything malformed.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;  // throws if absent
  // An owned copy of the tensor in its stored dtype (CPU, contiguous).
  torch::Tensor tensor(const std::string& name) const;
  // The tensor as a view of the file's pages (no copy; it keeps the mapping
  // alive), or a copy when its bytes are not aligned for its dtype.
  torch::Tensor mapped_tensor(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::shared_ptr<MappedRegion> region_;  // the whole file, shared with mapped tensors
  const uint8_t* data_ = nullptr;   // start of the mapping
  size_t size_ = 0;                 // mapping size
  uint64_t data_start_ = 0;         // 8 + header size
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes the tensors (any device/layout; F32, F16 or BF16) atomically, in the
// given order, with the header padded to a multiple of 8 bytes.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace dha::io
