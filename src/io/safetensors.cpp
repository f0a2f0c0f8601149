// safetensors I/O: a memory-mapped reader that validates the whole header before
// any tensor is touched, and an atomic writer that round-trips bit-exactly.
#include "dha/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/io/atomic_file.h"

namespace dha::io {
namespace {

using json = nlohmann::json;

// The reference implementation's limit; a larger header is corruption, not a model.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// A valid header nests three levels deep (root, entry, shape); rejecting deep
// nesting up front keeps hostile input from exhausting the stack.
constexpr size_t kMaxJsonDepth = 64;

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {"F32", torch::kFloat, 4},
    {"F16", torch::kHalf, 2},
    {"BF16", torch::kBFloat16, 2},
};
// Valid safetensors dtypes we do not load: these get "unsupported", anything
// else "unknown", so the user can tell a foreign model from a corrupt file.
constexpr const char* kOtherKnownDtypes[] = {
    "F64",     "I64",     "I32",     "I16",     "I8",      "U64",    "U32",
    "U16",     "U8",      "BOOL",    "F8_E4M3", "F8_E5M2", "F8_E8M0", "E8M0",
    "F6_E2M3", "F6_E3M2", "F4",      "C64",
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo* find_dtype(torch::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return &d;
  return nullptr;
}

bool is_other_known_dtype(const std::string& name) {
  for (const char* d : kOtherKnownDtypes)
    if (name == d) return true;
  return false;
}

// Names come from the file and may hold anything; keep error messages on one line.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string quoted(const std::string& s) { return "'" + printable(s) + "'"; }

// A short, single-line rendering of a JSON value for error messages.
std::string brief(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

size_t max_json_depth(const char* p, size_t n) {
  bool in_string = false, escaped = false;
  size_t depth = 0, deepest = 0;
  for (size_t i = 0; i < n; ++i) {
    char c = p[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

void parse_metadata(const std::string& path, const json& value,
                    std::map<std::string, std::string>& metadata) {
  if (!value.is_object())
    fail(path, ": __metadata__ is a ", value.type_name(), " (expected an object of strings)");
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string())
      fail(path, ": __metadata__ value for key ", quoted(key), " is a ", v.type_name(), " ",
           brief(v), " (expected a string)");
    metadata[key] = v.get<std::string>();
  }
}

SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const json& value,
                             uint64_t data_size) {
  const std::string tensor = "tensor " + quoted(name);
  if (!value.is_object())
    fail(path, ": ", tensor, " is a ", value.type_name(),
         " (expected an object with dtype, shape and data_offsets)");

  SafetensorsEntry e;
  e.name = name;

  auto dtype_it = value.find("dtype");
  if (dtype_it == value.end()) fail(path, ": ", tensor, " has no \"dtype\" field");
  if (!dtype_it->is_string())
    fail(path, ": ", tensor, " dtype is a ", dtype_it->type_name(), " (expected a string)");
  const std::string dtype_name = dtype_it->get<std::string>();
  const DtypeInfo* dtype = find_dtype(dtype_name);
  if (!dtype) {
    fail(path, ": ", is_other_known_dtype(dtype_name) ? "unsupported" : "unknown", " dtype ",
         printable(dtype_name.size() <= 32 ? dtype_name : dtype_name.substr(0, 32) + "..."),
         " for ", tensor, " (supported: F32, F16, BF16)");
  }
  e.dtype = dtype->type;

  auto shape_it = value.find("shape");
  if (shape_it == value.end()) fail(path, ": ", tensor, " has no \"shape\" field");
  if (!shape_it->is_array())
    fail(path, ": ", tensor, " shape is a ", shape_it->type_name(),
         " (expected an array of non-negative integers)");
  // Overflow guard: the product of the non-zero dims must fit, or a later
  // zero-size check could hide a shape torch cannot even describe.
  uint64_t capacity = 1;
  bool has_zero = false;
  for (const json& d : *shape_it) {
    if (!d.is_number_unsigned())
      fail(path, ": ", tensor, " shape ", brief(*shape_it), " has entry ", brief(d),
           " (expected non-negative integers)");
    uint64_t v = d.get<uint64_t>();
    if (v == 0) has_zero = true;
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(capacity, std::max<uint64_t>(v, 1), &capacity) ||
        capacity > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(path, ": ", tensor, " shape ", brief(*shape_it),
           " is too large (element count overflows 64 bits)");
    e.shape.push_back(static_cast<int64_t>(v));
  }
  const uint64_t numel = has_zero ? 0 : capacity;
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype->size), &nbytes))
    fail(path, ": ", tensor, " shape ", shape_string(e.shape),
         " is too large (byte size overflows 64 bits)");

  auto off_it = value.find("data_offsets");
  if (off_it == value.end()) fail(path, ": ", tensor, " has no \"data_offsets\" field");
  if (!off_it->is_array() || off_it->size() != 2 || !(*off_it)[0].is_number_unsigned() ||
      !(*off_it)[1].is_number_unsigned())
    fail(path, ": ", tensor, " data_offsets ", brief(*off_it),
         " is malformed (expected [begin, end] with two non-negative integers)");
  e.begin = (*off_it)[0].get<uint64_t>();
  e.end = (*off_it)[1].get<uint64_t>();
  if (e.begin > e.end)
    fail(path, ": ", tensor, " data_offsets [", e.begin, ", ", e.end,
         "] have begin after end (expected begin <= end)");
  if (e.end - e.begin != nbytes)
    fail(path, ": ", tensor, " data_offsets [", e.begin, ", ", e.end, "] do not match dtype ",
         dtype->name, " and shape ", shape_string(e.shape), " (expected ", nbytes, " bytes, got ",
         e.end - e.begin, ")");
  if (e.end > data_size)
    fail(path, ": ", tensor, " data_offsets [", e.begin, ", ", e.end,
         "] extend past the end of the data section (", data_size,
         " bytes; is the file truncated?)");
  return e;
}

// Two tensors sharing bytes would alias silently; empty tensors own no bytes.
void check_overlaps(const std::string& path, const std::map<std::string, SafetensorsEntry>& entries) {
  std::vector<const SafetensorsEntry*> ranges;
  for (const auto& [name, e] : entries)
    if (e.end > e.begin) ranges.push_back(&e);
  std::sort(ranges.begin(), ranges.end(),
            [](const SafetensorsEntry* a, const SafetensorsEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const SafetensorsEntry& a = *ranges[i - 1];
    const SafetensorsEntry& b = *ranges[i];
    if (a.end > b.begin)
      fail(path, ": tensors ", quoted(a.name), " [", a.begin, ", ", a.end, "] and ", quoted(b.name),
           " [", b.begin, ", ", b.end, "] overlap (expected disjoint byte ranges)");
  }
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file (expected a .safetensors file)");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail(path, ": file is ", file_size,
         " bytes, too short for a safetensors file (expected at least 8 bytes)");
  }
  // Private and writable: tensors viewing the file (mapped_tensor) may be
  // written to like any tensor, copy-on-write, without ever touching the file.
  void* map = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive on its own
  if (map == MAP_FAILED) fail(path, ": cannot mmap ", file_size, " bytes: ", std::strerror(map_err));
  region_ = std::make_shared<MappedRegion>(map, file_size);
  data_ = region_->data();
  size_ = file_size;

  // The destructor does not run when the constructor throws, so unmap here.
  try {
    uint64_t header_len = 0;
    std::memcpy(&header_len, data_, 8);  // little-endian host assumed (x86-64)
    if (header_len == 0) fail(path, ": header length is 0 (expected a JSON header)");
    if (header_len > file_size - 8)
      fail(path, ": header length ", header_len, " exceeds the file size ", file_size,
           " (expected at most ", file_size - 8, "; not a safetensors file or truncated)");
    if (header_len > kMaxHeaderBytes)
      fail(path, ": header length ", header_len, " exceeds the ", kMaxHeaderBytes,
           "-byte limit (expected a smaller header; corrupt file?)");
    data_start_ = 8 + header_len;
    const uint64_t data_size = file_size - data_start_;

    const char* header = reinterpret_cast<const char*>(data_ + 8);
    if (max_json_depth(header, header_len) > kMaxJsonDepth)
      fail(path, ": header nests deeper than ", kMaxJsonDepth,
           " levels (expected a flat JSON object; corrupt file?)");
    json root;
    try {
      root = json::parse(header, header + header_len);
    } catch (const json::exception& e) {
      fail(path, ": header is not valid JSON (", e.what(), ")");
    }
    if (!root.is_object())
      fail(path, ": header is a JSON ", root.type_name(), " (expected a JSON object)");

    for (const auto& [name, value] : root.items()) {
      if (name == "__metadata__") {
        parse_metadata(path, value, metadata_);
        continue;
      }
      entries_.emplace(name, parse_entry(path, name, value, data_size));
    }
    check_overlaps(path, entries_);
  } catch (...) {
    region_.reset();
    data_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() = default;

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);  // std::map: already sorted
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end())
    fail(path_, ": no tensor named ", quoted(name), " (the file has ", entries_.size(),
         " tensors)");
  return it->second;
}

torch::Tensor SafetensorsFile::mapped_tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const uint64_t offset = data_start_ + e.begin;
  if (e.end == e.begin || offset % c10::elementSize(e.dtype) != 0) return tensor(name);
  return view_region(region_, offset, e.shape, e.dtype);
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  // Copy out of the mapping: the tensor may outlive this object, and the
  // mapped bytes need not be aligned for the element type.
  torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
  const size_t nbytes = static_cast<size_t>(e.end - e.begin);
  if (nbytes > 0) std::memcpy(t.data_ptr(), data_ + data_start_ + e.begin, nbytes);
  return t;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Validate and normalise every tensor before building anything.
  std::set<std::string> seen;
  std::vector<torch::Tensor> cpu;
  cpu.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    const std::string tensor = "tensor " + quoted(name);
    if (name == "__metadata__")
      fail(path, ": tensor name '__metadata__' is reserved (expected another name)");
    if (!seen.insert(name).second)
      fail(path, ": duplicate ", tensor, " (expected unique tensor names)");
    if (!t.defined()) fail(path, ": ", tensor, " is undefined (expected a tensor)");
    if (!find_dtype(t.scalar_type()))
      fail(path, ": ", tensor, " has dtype ", c10::toString(t.scalar_type()),
           " (supported: float32, float16, bfloat16)");
    try {
      torch::Tensor c = t;
      if (c.layout() != torch::kStrided) c = c.to_dense();
      c = c.to(torch::kCPU).contiguous();
      cpu.push_back(c);
    } catch (const c10::Error& e) {
      std::string msg = e.what_without_backtrace();
      msg = msg.substr(0, msg.find('\n'));
      fail(path, ": ", tensor, " cannot be copied to the CPU (", msg, ")");
    }
  }

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = cpu[i];
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = find_dtype(t.scalar_type())->name;
    entry["shape"] = t.sizes().vec();
    entry["data_offsets"] = {offset, offset + nbytes};
    header[tensors[i].first] = std::move(entry);
    offset += nbytes;
  }

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": tensor names and metadata must be valid UTF-8 (", e.what(), ")");
  }
  // Padding keeps the data section 8-byte aligned in the file, which lets
  // readers that map the file use the tensors in place.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  // Streamed tensor by tensor: no second copy of the tensors in memory.
  AtomicFileWriter out(path);
  const uint64_t header_len = header_text.size();
  out.write(std::string_view(reinterpret_cast<const char*>(&header_len), 8));  // little-endian host (x86-64)
  out.write(header_text);
  for (const torch::Tensor& t : cpu) {
    const size_t nbytes = static_cast<size_t>(t.numel()) * t.element_size();
    if (nbytes > 0) out.write(std::string_view(static_cast<const char*>(t.data_ptr()), nbytes));
  }
  out.commit();
}

}  // namespace dha::io
