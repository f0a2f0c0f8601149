// GGUF, llama.cpp's single-file model format: a memory-mapped reader (every
// offset, size, count and string length bounds-checked), dequantization of the
// F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensor types, and an atomic writer (F32/F16/BF16).
//
// File layout (versions 2 and 3, little-endian): "GGUF" | u32 version |
// u64 tensor count | u64 metadata count | metadata key/value pairs | tensor
// infos (name, u32 n_dims, u64 dims[n_dims] innermost first, u32 ggml type,
// u64 offset) | padding to general.alignment (default 32) | data section.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace dha::io {

// Metadata value types, numbered as in the file.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint32", "string", "array", ...; "type N" for a number outside the enum.
std::string gguf_value_type_name(GgufValueType type);

// One metadata value: a scalar, a string, or an array whose elements all have
// one non-array type (ggml does not read nested arrays either). Integers and
// bools are kept exactly, float32 values widen losslessly to double.
class GgufValue {
 public:
  static GgufValue uint8(uint8_t v) { return unsigned_value(GgufValueType::kUint8, v); }
  static GgufValue int8(int8_t v) { return signed_value(GgufValueType::kInt8, v); }
  static GgufValue uint16(uint16_t v) { return unsigned_value(GgufValueType::kUint16, v); }
  static GgufValue int16(int16_t v) { return signed_value(GgufValueType::kInt16, v); }
  static GgufValue uint32(uint32_t v) { return unsigned_value(GgufValueType::kUint32, v); }
  static GgufValue int32(int32_t v) { return signed_value(GgufValueType::kInt32, v); }
  static GgufValue uint64(uint64_t v) { return unsigned_value(GgufValueType::kUint64, v); }
  static GgufValue int64(int64_t v) { return signed_value(GgufValueType::kInt64, v); }
  static GgufValue float32(float v) { return float_value(GgufValueType::kFloat32, v); }
  static GgufValue float64(double v) { return float_value(GgufValueType::kFloat64, v); }
  static GgufValue boolean(bool v) { return unsigned_value(GgufValueType::kBool, v ? 1 : 0); }
  static GgufValue string(std::string v);

  // Arrays. `element` must be of the matching kind (an unsigned type or kBool
  // for unsigned_array, ...); each value must fit it, else dha::Error.
  static GgufValue unsigned_array(GgufValueType element, std::vector<uint64_t> values);
  static GgufValue signed_array(GgufValueType element, std::vector<int64_t> values);
  static GgufValue float_array(GgufValueType element, std::vector<double> values);
  static GgufValue bool_array(const std::vector<bool>& values);
  static GgufValue string_array(std::vector<std::string> values);

  GgufValueType type() const { return type_; }
  bool is_array() const { return type_ == GgufValueType::kArray; }
  // The element type of an array; type() for a scalar.
  GgufValueType element_type() const { return element_; }
  // Number of elements: an array's length, 1 for a scalar.
  size_t size() const;

  // Element i (0 for a scalar) as a given kind; nullopt when the element type
  // is of another kind or the value does not fit (a uint64 above INT64_MAX as
  // an int, ...). as_int accepts every integer type, as_float both float types,
  // as_bool only kBool.
  std::optional<int64_t> as_int(size_t i = 0) const;
  std::optional<uint64_t> as_uint(size_t i = 0) const;
  std::optional<double> as_float(size_t i = 0) const;
  std::optional<bool> as_bool(size_t i = 0) const;
  const std::string* as_string(size_t i = 0) const;

  // "uint32", "array of 49152 string", ...: for messages.
  std::string describe() const;

  bool operator==(const GgufValue& other) const;
  bool operator!=(const GgufValue& other) const { return !(*this == other); }

  // Raw storage, one vector used per element kind (for the reader and writer).
  const std::vector<uint64_t>& unsigned_values() const { return unsigned_; }
  const std::vector<int64_t>& signed_values() const { return signed_; }
  const std::vector<double>& float_values() const { return floats_; }
  const std::vector<std::string>& string_values() const { return strings_; }

 private:
  static GgufValue unsigned_value(GgufValueType type, uint64_t v);
  static GgufValue signed_value(GgufValueType type, int64_t v);
  static GgufValue float_value(GgufValueType type, double v);

  GgufValueType type_ = GgufValueType::kUint8;
  GgufValueType element_ = GgufValueType::kUint8;
  std::vector<uint64_t> unsigned_;   // unsigned integer types and bool
  std::vector<int64_t> signed_;      // signed integer types
  std::vector<double> floats_;       // float32 and float64
  std::vector<std::string> strings_;
};

// Metadata in file order; set() replaces a key's value in place. The writer's
// input, so a future exporter builds one of these plus a tensor list.
class GgufMetadata {
 public:
  void set(const std::string& key, GgufValue value);
  const GgufValue* find(const std::string& key) const;
  bool erase(const std::string& key);
  const std::vector<std::pair<std::string, GgufValue>>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }

 private:
  std::vector<std::pair<std::string, GgufValue>> entries_;
  std::map<std::string, size_t> index_;
};

// ggml tensor types: the numbers of ggml.h, their names and block geometry
// (block_elements values stored in block_bytes bytes; 1 for plain types).
struct GgmlTypeInfo {
  uint32_t id;
  const char* name;
  int64_t block_elements;
  int64_t block_bytes;
};
constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8,
                   kGgmlBF16 = 30;
// nullptr for a number that is not a ggml type (or a removed one, e.g. 4 = Q4_2).
const GgmlTypeInfo* ggml_type_info(uint32_t id);
// Whether this reader dequantizes the type (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
bool ggml_type_supported(uint32_t id);
// "Q6_K (type 14)", or "unknown type 99".
std::string ggml_type_label(uint32_t id);

// The values of `n_elements` elements (a multiple of the block size) of type
// `type` stored at `data` (`n_bytes` bytes, which must be exactly their size)
// as float32, by ggml's definitions (blocks of 32): Q8_0 x = d*q (q int8),
// Q4_0 x = d*(q - 8), Q4_1 x = d*q + m (q the 4-bit values, low nibbles first),
// with d and m float16. Throws dha::Error naming `where` for an unsupported type.
torch::Tensor ggml_dequantize(uint32_t type, const uint8_t* data, int64_t n_bytes, int64_t n_elements,
                              const std::string& where);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the innermost (contiguous) dimension
  uint32_t type = 0;          // ggml type id
  uint64_t offset = 0;        // relative to the data section
  uint64_t n_bytes = 0;

  // torch/HF order: dims reversed, so a ggml [in, out] weight is [out, in].
  std::vector<int64_t> shape() const { return {dims.rbegin(), dims.rend()}; }
  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps the file and validates header, metadata and tensor infos; throws a
  // one-line dha::Error naming the file and the offending field.
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_start_; }  // absolute start of the data section

  // ---- metadata ----
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;
  // Typed getters: get_* throw when the key is absent, find_* return nullopt;
  // both throw "FILE: metadata 'KEY' is a float32 (expected an integer)" on a
  // value of another type.
  int64_t get_int(const std::string& key) const;
  std::optional<int64_t> find_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // float32 or float64
  std::optional<double> find_float(const std::string& key) const;
  std::optional<bool> find_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::optional<std::string> find_string(const std::string& key) const;
  // Arrays (nullopt when absent): of strings, of any integer type, of floats.
  std::optional<std::vector<std::string>> find_strings(const std::string& key) const;
  std::optional<std::vector<int64_t>> find_ints(const std::string& key) const;
  std::optional<std::vector<float>> find_floats(const std::string& key) const;

  // ---- tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // file order
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  const GgufTensorInfo& tensor_info(const std::string& name) const;  // throws if absent
  // An owned CPU tensor in torch order: F32/F16/BF16 in their stored dtype,
  // quantized types dequantized to float32. Unsupported types throw, naming
  // the type and the supported ones.
  torch::Tensor tensor(const std::string& name) const;
  // The stored bytes of a tensor (valid while this object lives).
  const uint8_t* tensor_data(const GgufTensorInfo& info) const { return data_ + data_start_ + info.offset; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// The tokenizer metadata llama.cpp stores (tokenizer.ggml.*), read and
// length-checked; absent optional keys stay empty / nullopt.
struct GgufTokenizerData {
  std::string model;                   // tokenizer.ggml.model: "llama", "gpt2", ...
  std::string pre;                     // tokenizer.ggml.pre (pre-tokenizer name)
  std::vector<std::string> tokens;     // tokenizer.ggml.tokens
  std::vector<float> scores;           // tokenizer.ggml.scores (empty or one per token)
  std::vector<int32_t> token_types;    // tokenizer.ggml.token_type (empty or one per token)
  std::vector<std::string> merges;     // tokenizer.ggml.merges ("a b" per merge)
  std::optional<int64_t> bos_id, eos_id, unknown_id, padding_id;
  std::optional<bool> add_bos, add_eos, add_space_prefix;
};
// Throws naming the file and key when tokens are absent, a list has another
// length than tokens, or a token id is out of range.
GgufTokenizerData read_gguf_tokenizer(const GgufFile& file);

// Writes a GGUF version 3 file atomically: the metadata in order, then the
// tensor infos and data in the given order, each tensor at an offset aligned
// to general.alignment (when the metadata sets it: a uint32 power of two) or
// 32. Tensors (any device) must be float32, float16 or bfloat16 with 1 to 4
// dimensions; they are written as F32/F16/BF16 with dims reversed (ggml
// order). Names must be unique and under 64 bytes (llama.cpp's limit).
void save_gguf(const std::string& path, const GgufMetadata& metadata,
               const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

}  // namespace dha::io
