// Mapped file regions: a registry of live mappings, so that a tensor's data
// pointer tells whether it is file pages that may be handed back.
#include "dha/io/mapped_region.h"

#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <mutex>

#include "dha/error.h"

namespace dha::io {
namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

std::map<uintptr_t, uintptr_t>& registry() {  // begin -> end of every live region
  static std::map<uintptr_t, uintptr_t> r;
  return r;
}

bool in_region(uintptr_t begin, uintptr_t end) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto it = registry().upper_bound(begin);
  if (it == registry().begin()) return false;
  --it;
  return begin >= it->first && end <= it->second;
}

}  // namespace

MappedRegion::MappedRegion(void* address, size_t size) : address_(address), size_(size) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  const auto begin = reinterpret_cast<uintptr_t>(address);
  registry()[begin] = begin + size;
}

MappedRegion::~MappedRegion() {
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    registry().erase(reinterpret_cast<uintptr_t>(address_));
  }
  ::munmap(address_, size_);
}

torch::Tensor view_region(const std::shared_ptr<MappedRegion>& region, uint64_t offset,
                          const std::vector<int64_t>& shape, torch::ScalarType dtype) {
  auto* data = const_cast<uint8_t*>(region->data()) + offset;
  if (reinterpret_cast<uintptr_t>(data) % c10::elementSize(dtype) != 0)
    fail("internal: a mapped tensor at offset ", offset, " is not aligned for its dtype");
  std::shared_ptr<MappedRegion> keep = region;
  return torch::from_blob(data, shape, [keep](void*) mutable { keep.reset(); }, torch::TensorOptions().dtype(dtype));
}

bool is_mapped(const torch::Tensor& t) {
  if (!t.defined() || !t.device().is_cpu() || !t.has_storage()) return false;
  const auto begin = reinterpret_cast<uintptr_t>(t.storage().data());
  return in_region(begin, begin + t.storage().nbytes());
}

int64_t release_resident_pages(const torch::Tensor& t) {
  if (!is_mapped(t)) return 0;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(t.storage().data());
  const uintptr_t end = begin + t.storage().nbytes();
  // Whole pages only: the pages at either edge may hold a neighbouring tensor.
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last <= first) return 0;
#ifdef MADV_PAGEOUT
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_PAGEOUT) == 0)
    return static_cast<int64_t>(last - first);
#endif
  return 0;  // an older kernel: the pages stay until memory pressure reclaims them
}

}  // namespace dha::io
