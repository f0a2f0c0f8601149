// GGUF container I/O: a memory-mapped reader that validates the header, every
// metadata value and every tensor's byte range before any tensor is touched,
// typed metadata access, and an atomic writer of F32/F16/BF16 tensors.
#include "dha/io/gguf.h"

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

#include "dha/error.h"
#include "dha/io/atomic_file.h"

namespace dha::io {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kWriteVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kHeaderBytes = 4 + 4 + 8 + 8;
// Smallest encodings, used to refuse counts the file cannot hold before
// anything is allocated: a key/value pair is a key length, a type and at least
// one value byte; a tensor info a name length, n_dims, one dim, type, offset.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
// Metadata arrays are expanded into 8-byte (or std::string) elements, so a
// count that the file's bytes could back is still capped: 64 times the
// largest real vocabulary (262144 tokens).
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 24;
constexpr uint32_t kMaxDims = 4;        // GGML_MAX_DIMS
constexpr size_t kMaxNameBytes = 63;    // GGML_MAX_NAME is 64 with the terminator

// Names and strings come from the file and may hold anything; keep messages on one line.
std::string printable(const std::string& s, size_t limit = 80) {
  std::string out;
  for (unsigned char c : s.substr(0, limit)) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > limit) out += "...";
  return out;
}

std::string in_quotes(const std::string& s) { return "'" + printable(s) + "'"; }

std::string dims_string(const std::vector<int64_t>& dims) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < dims.size(); ++i) out << (i ? ", " : "") << dims[i];
  out << ']';
  return out.str();
}

size_t scalar_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64: return 8;
    default: return 0;  // string, array: variable
  }
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

// Sequential reads from the mapping; every read is bounds-checked by the caller's
// fits() first, so that the error can say which field ran past the end.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  bool fits(uint64_t n) const { return n <= remaining(); }

  template <typename T>
  T read(const std::string& what) {
    if (!fits(sizeof(T)))
      fail(path_, ": ", what, " at offset ", pos_, " runs past the end of the file (", size_,
           " bytes; truncated?)");
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // little-endian host assumed (x86-64)
    pos_ += sizeof(T);
    return v;
  }

  // A u64 length followed by that many bytes.
  std::string read_string(const std::string& what) {
    const uint64_t at = pos_;
    const uint64_t n = read<uint64_t>(what + " length");
    if (!fits(n))
      fail(path_, ": ", what, " at offset ", at, " has length ", n, ", which runs past the end of the file (",
           size_, " bytes)");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }

  const uint8_t* here() const { return data_ + pos_; }
  void skip(uint64_t n) { pos_ += n; }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// `count` elements of one scalar type, already bounds-checked, into `out`.
void read_scalars(GgufValueType type, const uint8_t* p, uint64_t count, GgufValue& out, bool array);

GgufValue read_value(Cursor& in, const std::string& path, const std::string& key, uint32_t raw_type) {
  const std::string what = "metadata " + in_quotes(key);
  if (!known_value_type(raw_type))
    fail(path, ": ", what, " has unknown value type ", raw_type, " (expected 0 to 12)");
  const auto type = static_cast<GgufValueType>(raw_type);
  if (type == GgufValueType::kString) return GgufValue::string(in.read_string(what + " string"));
  if (type != GgufValueType::kArray) {
    const size_t n = scalar_bytes(type);
    if (!in.fits(n))
      fail(path, ": ", what, " (", gguf_value_type_name(type), ") at offset ", in.pos(),
           " runs past the end of the file (truncated?)");
    GgufValue v;
    read_scalars(type, in.here(), 1, v, false);
    in.skip(n);
    return v;
  }

  const uint32_t raw_element = in.read<uint32_t>(what + " array element type");
  if (!known_value_type(raw_element))
    fail(path, ": ", what, " is an array of unknown value type ", raw_element, " (expected 0 to 12)");
  const auto element = static_cast<GgufValueType>(raw_element);
  if (element == GgufValueType::kArray)
    fail(path, ": ", what, " is an array of arrays (not supported, as in ggml)");
  const uint64_t at = in.pos();
  const uint64_t count = in.read<uint64_t>(what + " array length");
  if (count > kMaxArrayElements)
    fail(path, ": ", what, " at offset ", at, " claims ", count, " elements, more than the reader's limit of ",
         kMaxArrayElements);
  if (element == GgufValueType::kString) {
    // Every string takes at least its 8-byte length: refuse a lying count up front.
    if (count > in.remaining() / 8)
      fail(path, ": ", what, " at offset ", at, " claims ", count, " strings, more than the ",
           in.remaining(), " remaining bytes can hold");
    std::vector<std::string> strings;
    strings.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i)
      strings.push_back(in.read_string(what + " element " + std::to_string(i)));
    return GgufValue::string_array(std::move(strings));
  }
  const size_t n = scalar_bytes(element);
  if (count > in.remaining() / n)
    fail(path, ": ", what, " at offset ", at, " claims ", count, " ", gguf_value_type_name(element),
         " values (", n, " bytes each), more than the ", in.remaining(), " remaining bytes");
  GgufValue v;
  read_scalars(element, in.here(), count, v, true);
  in.skip(count * n);
  return v;
}

void read_scalars(GgufValueType type, const uint8_t* p, uint64_t count, GgufValue& out, bool array) {
  const size_t n = scalar_bytes(type);
  auto each = [&](auto decode) {
    using T = decltype(decode(p));
    std::vector<T> values(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) values[i] = decode(p + i * n);
    return values;
  };
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kUint16:
    case GgufValueType::kUint32:
    case GgufValueType::kUint64:
    case GgufValueType::kBool: {
      auto values = each([&](const uint8_t* q) -> uint64_t {
        if (n == 1) return load<uint8_t>(q);
        if (n == 2) return load<uint16_t>(q);
        if (n == 4) return load<uint32_t>(q);
        return load<uint64_t>(q);
      });
      if (type == GgufValueType::kBool)
        for (auto& v : values) v = v != 0;  // ggml reads any non-zero byte as true
      out = array ? GgufValue::unsigned_array(type, std::move(values))
                  : type == GgufValueType::kBool ? GgufValue::boolean(values[0] != 0)
                  : type == GgufValueType::kUint8 ? GgufValue::uint8(static_cast<uint8_t>(values[0]))
                  : type == GgufValueType::kUint16 ? GgufValue::uint16(static_cast<uint16_t>(values[0]))
                  : type == GgufValueType::kUint32 ? GgufValue::uint32(static_cast<uint32_t>(values[0]))
                  : GgufValue::uint64(values[0]);
      return;
    }
    case GgufValueType::kInt8:
    case GgufValueType::kInt16:
    case GgufValueType::kInt32:
    case GgufValueType::kInt64: {
      auto values = each([&](const uint8_t* q) -> int64_t {
        if (n == 1) return load<int8_t>(q);
        if (n == 2) return load<int16_t>(q);
        if (n == 4) return load<int32_t>(q);
        return load<int64_t>(q);
      });
      out = array ? GgufValue::signed_array(type, std::move(values))
                  : type == GgufValueType::kInt8 ? GgufValue::int8(static_cast<int8_t>(values[0]))
                  : type == GgufValueType::kInt16 ? GgufValue::int16(static_cast<int16_t>(values[0]))
                  : type == GgufValueType::kInt32 ? GgufValue::int32(static_cast<int32_t>(values[0]))
                  : GgufValue::int64(values[0]);
      return;
    }
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64: {
      auto values = each([&](const uint8_t* q) -> double {
        return n == 4 ? static_cast<double>(load<float>(q)) : load<double>(q);
      });
      out = array ? GgufValue::float_array(type, std::move(values))
                  : type == GgufValueType::kFloat32 ? GgufValue::float32(static_cast<float>(values[0]))
                  : GgufValue::float64(values[0]);
      return;
    }
    default: break;
  }
}

uint64_t align_up(uint64_t x, uint64_t alignment) { return (x + alignment - 1) / alignment * alignment; }

bool is_power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

std::string u128_string(unsigned __int128 v) {
  std::string s;
  do {
    s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v != 0);
  return s;
}

}  // namespace

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

GgufFile::GgufFile(const std::string& path) : path_(path) {
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
    fail(path, ": not a regular file (expected a .gguf file)");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kHeaderBytes) {
    ::close(fd);
    fail(path, ": file is ", file_size, " bytes, too short for a GGUF header (expected at least ",
         kHeaderBytes, " bytes)");
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive on its own
  if (map == MAP_FAILED) fail(path, ": cannot mmap ", file_size, " bytes: ", std::strerror(map_err));
  data_ = static_cast<const uint8_t*>(map);
  size_ = file_size;

  // The destructor does not run when the constructor throws, so unmap here.
  try {
    Cursor in(path, data_, file_size);
    if (std::memcmp(data_, kMagic, 4) != 0)
      fail(path, ": bad magic ", in_quotes(std::string(reinterpret_cast<const char*>(data_), 4)),
           " (expected 'GGUF'; not a GGUF file)");
    in.skip(4);
    version_ = in.read<uint32_t>("version");
    if (version_ != 2 && version_ != 3) {
      const uint32_t swapped = __builtin_bswap32(version_);
      if (swapped == 2 || swapped == 3)
        fail(path, ": GGUF version field reads ", version_, ", a big-endian file (only little-endian is supported)");
      fail(path, ": GGUF version ", version_, " is not supported (expected 2 or 3)");
    }
    const uint64_t n_tensors = in.read<uint64_t>("tensor count");
    const uint64_t n_kv = in.read<uint64_t>("metadata count");
    if (n_kv > in.remaining() / kMinKvBytes)
      fail(path, ": metadata count ", n_kv, " cannot fit in the ", in.remaining(),
           " bytes after the header (each entry takes at least ", kMinKvBytes, ")");
    if (n_tensors > in.remaining() / kMinTensorInfoBytes)
      fail(path, ": tensor count ", n_tensors, " cannot fit in the ", in.remaining(),
           " bytes after the header (each tensor info takes at least ", kMinTensorInfoBytes, ")");

    metadata_.reserve(static_cast<size_t>(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
      const std::string key =
          in.read_string("metadata key " + std::to_string(i) + " of " + std::to_string(n_kv));
      const uint32_t type = in.read<uint32_t>("metadata " + in_quotes(key) + " value type");
      GgufValue value = read_value(in, path, key, type);
      if (!metadata_index_.emplace(key, metadata_.size()).second)
        fail(path, ": metadata key ", in_quotes(key), " appears twice");
      metadata_.emplace_back(key, std::move(value));
    }

    if (const GgufValue* a = find("general.alignment")) {
      if (a->type() != GgufValueType::kUint32)
        fail(path, ": metadata 'general.alignment' has type ", a->describe(), " (expected uint32)");
      alignment_ = *a->as_uint();
      if (!is_power_of_two(alignment_))
        fail(path, ": metadata 'general.alignment' = ", alignment_, " is not a power of two");
    }

    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      // The index and count in every message: a count that lies shows up as
      // a garbled info right after the last real one.
      const std::string info = "tensor info " + std::to_string(i) + " of " + std::to_string(n_tensors);
      t.name = in.read_string(info + " name");
      const std::string what = "tensor " + in_quotes(t.name) + " (" + info + ")";
      const uint32_t n_dims = in.read<uint32_t>(what + " n_dims");
      if (n_dims < 1 || n_dims > kMaxDims)
        fail(path, ": ", what, " has ", n_dims, " dimensions (expected 1 to ", kMaxDims, ")");
      uint64_t numel = 1;  // of the non-zero dims: a zero dim must not hide an overflow
      bool empty = false;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t dim = in.read<uint64_t>(what + " dimension " + std::to_string(d));
        if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
            __builtin_mul_overflow(numel, std::max<uint64_t>(dim, 1), &numel) ||
            numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          fail(path, ": ", what, " dimension ", d, " = ", dim, " makes the element count overflow 64 bits");
        t.dims.push_back(static_cast<int64_t>(dim));
        empty = empty || dim == 0;
      }
      t.type = in.read<uint32_t>(what + " type");
      const GgmlTypeInfo* type = ggml_type_info(t.type);
      if (!type) fail(path, ": ", what, " has unknown ggml type ", t.type);
      if (t.dims[0] % type->block_elements != 0)
        fail(path, ": ", what, " has rows of ", t.dims[0], " elements, not a multiple of ", type->name,
             "'s block of ", type->block_elements);
      const uint64_t blocks = (empty ? 0 : numel) / static_cast<uint64_t>(type->block_elements);
      if (__builtin_mul_overflow(blocks, static_cast<uint64_t>(type->block_bytes), &t.n_bytes))
        fail(path, ": ", what, " dims ", dims_string(t.dims), " of ", type->name,
             " make the byte size overflow 64 bits");
      t.offset = in.read<uint64_t>(what + " offset");
      if (t.offset % alignment_ != 0)
        fail(path, ": ", what, " has data offset ", t.offset, ", not a multiple of the alignment ", alignment_);
      if (!tensor_index_.emplace(t.name, tensors_.size()).second)
        fail(path, ": tensor name ", in_quotes(t.name), " appears twice");
      tensors_.push_back(std::move(t));
    }

    data_start_ = align_up(in.pos(), alignment_);
    for (const GgufTensorInfo& t : tensors_) {
      // 128-bit sums: offset and size each fit 64 bits, their sum need not.
      const unsigned __int128 begin = static_cast<unsigned __int128>(data_start_) + t.offset;
      const unsigned __int128 end = begin + t.n_bytes;
      if (t.n_bytes > 0 && end > file_size)
        fail(path, ": tensor ", in_quotes(t.name), ": data [", u128_string(begin), ", ", u128_string(end),
             ") runs past the end of the file (", file_size, " bytes)");
    }
    // Two tensors sharing bytes would alias silently; empty tensors own none.
    std::vector<const GgufTensorInfo*> ranges;
    for (const auto& t : tensors_)
      if (t.n_bytes > 0) ranges.push_back(&t);
    std::stable_sort(ranges.begin(), ranges.end(),
              [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i - 1]->offset + ranges[i - 1]->n_bytes > ranges[i]->offset)
        fail(path, ": tensors ", in_quotes(ranges[i - 1]->name), " and ", in_quotes(ranges[i]->name),
             " overlap in the data section (offsets ", ranges[i - 1]->offset, " + ", ranges[i - 1]->n_bytes,
             " bytes and ", ranges[i]->offset, ")");
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = nullptr;
    throw;
  }
}

GgufFile::~GgufFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

namespace {

[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const GgufValue& v,
                             const char* expected) {
  fail(path, ": metadata ", in_quotes(key), " has type ", v.describe(), " (expected ", expected, ")");
}

}  // namespace

std::optional<int64_t> GgufFile::find_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_array()) wrong_type(path_, key, *v, "an integer");
  const auto i = v->as_int();
  if (!i) {
    if (v->as_uint()) fail(path_, ": metadata ", in_quotes(key), " = ", *v->as_uint(), " is out of range");
    wrong_type(path_, key, *v, "an integer");
  }
  return i;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const auto v = find_int(key);
  if (!v) fail(path_, ": metadata ", in_quotes(key), " is missing (expected an integer)");
  return *v;
}

std::optional<double> GgufFile::find_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_array() || !v->as_float()) wrong_type(path_, key, *v, "float32 or float64");
  return v->as_float();
}

double GgufFile::get_float(const std::string& key) const {
  const auto v = find_float(key);
  if (!v) fail(path_, ": metadata ", in_quotes(key), " is missing (expected a float)");
  return *v;
}

std::optional<bool> GgufFile::find_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_array() || !v->as_bool()) wrong_type(path_, key, *v, "a bool");
  return v->as_bool();
}

std::optional<std::string> GgufFile::find_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_array() || !v->as_string()) wrong_type(path_, key, *v, "a string");
  return *v->as_string();
}

std::string GgufFile::get_string(const std::string& key) const {
  const auto v = find_string(key);
  if (!v) fail(path_, ": metadata ", in_quotes(key), " is missing (expected a string)");
  return *v;
}

std::optional<std::vector<std::string>> GgufFile::find_strings(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array() || v->element_type() != GgufValueType::kString)
    wrong_type(path_, key, *v, "an array of strings");
  return v->string_values();
}

std::optional<std::vector<int64_t>> GgufFile::find_ints(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) wrong_type(path_, key, *v, "an array of integers");
  std::vector<int64_t> out(v->size());
  for (size_t i = 0; i < out.size(); ++i) {
    const auto x = v->as_int(i);
    if (!x) {
      if (v->as_uint(i))
        fail(path_, ": metadata ", in_quotes(key), " element ", i, " = ", *v->as_uint(i), " is out of range");
      wrong_type(path_, key, *v, "an array of integers");
    }
    out[i] = *x;
  }
  return out;
}

std::optional<std::vector<float>> GgufFile::find_floats(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array() || (v->element_type() != GgufValueType::kFloat32 &&
                         v->element_type() != GgufValueType::kFloat64))
    wrong_type(path_, key, *v, "an array of floats");
  return std::vector<float>(v->float_values().begin(), v->float_values().end());
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor_info(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) fail(path_, ": no tensor named ", in_quotes(name), " (the file has ", tensors_.size(), " tensors)");
  return *t;
}

torch::Tensor GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo& info = tensor_info(name);
  const std::string where = path_ + ": tensor " + in_quotes(name);
  const std::vector<int64_t> shape = info.shape();
  // Plain float types keep their dtype (copied out: the tensor may outlive the
  // mapping, and the mapped bytes need not be aligned for the element type).
  if (info.type == kGgmlF32 || info.type == kGgmlF16 || info.type == kGgmlBF16) {
    const torch::ScalarType dtype =
        info.type == kGgmlF32 ? torch::kFloat32 : info.type == kGgmlF16 ? torch::kHalf : torch::kBFloat16;
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    if (info.n_bytes > 0) std::memcpy(t.data_ptr(), tensor_data(info), static_cast<size_t>(info.n_bytes));
    return t;
  }
  return ggml_dequantize(info.type, tensor_data(info), static_cast<int64_t>(info.n_bytes), info.numel(), where)
      .reshape(shape);
}

GgufTokenizerData read_gguf_tokenizer(const GgufFile& file) {
  GgufTokenizerData t;
  auto tokens = file.find_strings("tokenizer.ggml.tokens");
  if (!tokens) fail(file.path(), ": metadata 'tokenizer.ggml.tokens' is missing (the file has no vocabulary)");
  t.tokens = std::move(*tokens);
  const size_t n = t.tokens.size();
  t.model = file.find_string("tokenizer.ggml.model").value_or("");
  t.pre = file.find_string("tokenizer.ggml.pre").value_or("");
  if (auto scores = file.find_floats("tokenizer.ggml.scores")) t.scores = std::move(*scores);
  if (auto types = file.find_ints("tokenizer.ggml.token_type")) {
    for (int64_t v : *types) {
      if (v < INT32_MIN || v > INT32_MAX)
        fail(file.path(), ": metadata 'tokenizer.ggml.token_type' holds ", v, " (expected int32 values)");
      t.token_types.push_back(static_cast<int32_t>(v));
    }
  }
  if (auto merges = file.find_strings("tokenizer.ggml.merges")) t.merges = std::move(*merges);
  if (!t.scores.empty() && t.scores.size() != n)
    fail(file.path(), ": metadata 'tokenizer.ggml.scores' has ", t.scores.size(), " entries for ", n, " tokens");
  if (!t.token_types.empty() && t.token_types.size() != n)
    fail(file.path(), ": metadata 'tokenizer.ggml.token_type' has ", t.token_types.size(), " entries for ", n,
         " tokens");
  auto id = [&](const char* key) -> std::optional<int64_t> {
    auto v = file.find_int(key);
    if (v && (*v < 0 || static_cast<uint64_t>(*v) >= n))
      fail(file.path(), ": metadata ", in_quotes(key), " = ", *v, " is not a token id (", n, " tokens)");
    return v;
  };
  t.bos_id = id("tokenizer.ggml.bos_token_id");
  t.eos_id = id("tokenizer.ggml.eos_token_id");
  t.unknown_id = id("tokenizer.ggml.unknown_token_id");
  t.padding_id = id("tokenizer.ggml.padding_token_id");
  t.add_bos = file.find_bool("tokenizer.ggml.add_bos_token");
  t.add_eos = file.find_bool("tokenizer.ggml.add_eos_token");
  t.add_space_prefix = file.find_bool("tokenizer.ggml.add_space_prefix");
  return t;
}

// ---- writer -------------------------------------------------------------------

namespace {

template <typename T>
void put(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));  // little-endian host assumed (x86-64)
  out.append(buf, sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_scalars(std::string& out, const GgufValue& v) {
  const GgufValueType t = v.element_type();
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) {
    switch (t) {
      case GgufValueType::kUint8:
      case GgufValueType::kBool: put<uint8_t>(out, static_cast<uint8_t>(v.unsigned_values()[i])); break;
      case GgufValueType::kUint16: put<uint16_t>(out, static_cast<uint16_t>(v.unsigned_values()[i])); break;
      case GgufValueType::kUint32: put<uint32_t>(out, static_cast<uint32_t>(v.unsigned_values()[i])); break;
      case GgufValueType::kUint64: put<uint64_t>(out, v.unsigned_values()[i]); break;
      case GgufValueType::kInt8: put<int8_t>(out, static_cast<int8_t>(v.signed_values()[i])); break;
      case GgufValueType::kInt16: put<int16_t>(out, static_cast<int16_t>(v.signed_values()[i])); break;
      case GgufValueType::kInt32: put<int32_t>(out, static_cast<int32_t>(v.signed_values()[i])); break;
      case GgufValueType::kInt64: put<int64_t>(out, v.signed_values()[i]); break;
      case GgufValueType::kFloat32: put<float>(out, static_cast<float>(v.float_values()[i])); break;
      case GgufValueType::kFloat64: put<double>(out, v.float_values()[i]); break;
      case GgufValueType::kString: put_string(out, v.string_values()[i]); break;
      case GgufValueType::kArray: break;  // not constructible
    }
  }
}

void pad_to(std::string& out, uint64_t alignment) { out.append(align_up(out.size(), alignment) - out.size(), '\0'); }

}  // namespace

void save_gguf(const std::string& path, const GgufMetadata& metadata,
               const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  uint64_t alignment = kDefaultAlignment;
  if (const GgufValue* a = metadata.find("general.alignment")) {
    if (a->type() != GgufValueType::kUint32 || !is_power_of_two(*a->as_uint()))
      fail(path, ": metadata 'general.alignment' must be a uint32 power of two (got ", a->describe(), ")");
    alignment = *a->as_uint();
  }
  for (const auto& [key, value] : metadata.entries())
    if (key.empty()) fail(path, ": a metadata key is empty (expected a name such as 'general.name')");

  // Validate and normalise every tensor before building anything.
  std::set<std::string> seen;
  std::vector<torch::Tensor> cpu;
  std::vector<uint32_t> types;
  for (const auto& [name, t] : tensors) {
    const std::string what = "tensor " + in_quotes(name);
    if (name.empty()) fail(path, ": a tensor name is empty");
    if (name.size() > kMaxNameBytes)
      fail(path, ": ", what, " has a ", name.size(), "-byte name (llama.cpp allows at most ", kMaxNameBytes, ")");
    if (!seen.insert(name).second) fail(path, ": duplicate ", what, " (expected unique tensor names)");
    if (!t.defined()) fail(path, ": ", what, " is undefined (expected a tensor)");
    if (t.dim() < 1 || t.dim() > static_cast<int64_t>(kMaxDims))
      fail(path, ": ", what, " has ", t.dim(), " dimensions (GGUF holds 1 to ", kMaxDims, ")");
    const torch::ScalarType s = t.scalar_type();
    if (s != torch::kFloat32 && s != torch::kHalf && s != torch::kBFloat16)
      fail(path, ": ", what, " has dtype ", c10::toString(s), " (supported: float32, float16, bfloat16)");
    types.push_back(s == torch::kFloat32 ? kGgmlF32 : s == torch::kHalf ? kGgmlF16 : kGgmlBF16);
    torch::Tensor c = t;
    if (c.layout() != torch::kStrided) c = c.to_dense();
    cpu.push_back(c.to(torch::kCPU).contiguous());
  }

  std::string out;
  out.append(kMagic, 4);
  put<uint32_t>(out, kWriteVersion);
  put<uint64_t>(out, tensors.size());
  put<uint64_t>(out, metadata.size());
  for (const auto& [key, value] : metadata.entries()) {
    put_string(out, key);
    put<uint32_t>(out, static_cast<uint32_t>(value.type()));
    if (value.is_array()) {
      put<uint32_t>(out, static_cast<uint32_t>(value.element_type()));
      put<uint64_t>(out, value.size());
    }
    put_scalars(out, value);
  }
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = cpu[i];
    put_string(out, tensors[i].first);
    put<uint32_t>(out, static_cast<uint32_t>(t.dim()));
    for (int64_t d = t.dim() - 1; d >= 0; --d) put<uint64_t>(out, static_cast<uint64_t>(t.size(d)));
    put<uint32_t>(out, types[i]);
    put<uint64_t>(out, offset);
    offsets.push_back(offset);
    offset = align_up(offset + static_cast<uint64_t>(t.numel() * t.element_size()), alignment);
  }
  pad_to(out, alignment);
  // The header, then the tensors streamed one at a time: no second copy in memory.
  AtomicFileWriter file(path);
  file.write(out);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = cpu[i];
    const uint64_t nbytes = static_cast<uint64_t>(t.numel() * t.element_size());
    file.write_zeros(out.size() + offsets[i] - file.written());
    file.write(std::string_view(static_cast<const char*>(t.data_ptr()), nbytes));
  }
  file.write_zeros(out.size() + offset - file.written());  // the last tensor padded as well, as gguf-py does
  file.commit();
}

}  // namespace dha::io
