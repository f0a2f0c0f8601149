// Memory-mapped file regions shared by the tensors that view them: a loaded
// checkpoint's weights stay pages of the file (no copy) and can be handed back
// to the kernel once a stage has made its own fp32 copies of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <torch/types.h>

namespace dha::io {

// One mmap of a whole file (private, copy-on-write: writes through a view stay
// in this process and never reach the file); unmapped when the last owner goes.
class MappedRegion {
 public:
  MappedRegion(void* address, size_t size);  // takes ownership of the mapping
  ~MappedRegion();
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  const uint8_t* data() const { return static_cast<const uint8_t*>(address_); }
  size_t size() const { return size_; }

 private:
  void* address_;
  size_t size_;
};

// A tensor viewing `bytes` of the region at `offset` (which must be aligned for
// `dtype`); the tensor keeps the region alive.
torch::Tensor view_region(const std::shared_ptr<MappedRegion>& region, uint64_t offset,
                          const std::vector<int64_t>& shape, torch::ScalarType dtype);

// Whether `t` views a mapped region.
bool is_mapped(const torch::Tensor& t);

// Asks the kernel to reclaim the resident pages of a tensor that views a
// mapped region (MADV_PAGEOUT: clean file pages are dropped and read again
// from the file on the next access; pages this process wrote to are kept or
// swapped, never lost). The tensor stays valid. No-op for other tensors, or
// where the kernel does not support it. Returns the bytes advised.
int64_t release_resident_pages(const torch::Tensor& t);

}  // namespace dha::io
