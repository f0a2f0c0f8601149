// GGUF metadata values and the ordered metadata the writer takes: exact storage
// of every scalar and array type, range-checked construction, typed access.
#include <cstring>
#include <limits>

#include "dha/error.h"
#include "dha/io/gguf.h"

namespace dha::io {
namespace {

bool is_unsigned_kind(GgufValueType t) {
  return t == GgufValueType::kUint8 || t == GgufValueType::kUint16 || t == GgufValueType::kUint32 ||
         t == GgufValueType::kUint64 || t == GgufValueType::kBool;
}
bool is_signed_kind(GgufValueType t) {
  return t == GgufValueType::kInt8 || t == GgufValueType::kInt16 || t == GgufValueType::kInt32 ||
         t == GgufValueType::kInt64;
}
bool is_float_kind(GgufValueType t) {
  return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64;
}

uint64_t unsigned_max(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: return std::numeric_limits<uint8_t>::max();
    case GgufValueType::kUint16: return std::numeric_limits<uint16_t>::max();
    case GgufValueType::kUint32: return std::numeric_limits<uint32_t>::max();
    case GgufValueType::kBool: return 1;
    default: return std::numeric_limits<uint64_t>::max();
  }
}

std::pair<int64_t, int64_t> signed_range(GgufValueType t) {
  switch (t) {
    case GgufValueType::kInt8: return {INT8_MIN, INT8_MAX};
    case GgufValueType::kInt16: return {INT16_MIN, INT16_MAX};
    case GgufValueType::kInt32: return {INT32_MIN, INT32_MAX};
    default: return {INT64_MIN, INT64_MAX};
  }
}

uint64_t double_bits(double v) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

}  // namespace

std::string gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8: return "uint8";
    case GgufValueType::kInt8: return "int8";
    case GgufValueType::kUint16: return "uint16";
    case GgufValueType::kInt16: return "int16";
    case GgufValueType::kUint32: return "uint32";
    case GgufValueType::kInt32: return "int32";
    case GgufValueType::kFloat32: return "float32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "uint64";
    case GgufValueType::kInt64: return "int64";
    case GgufValueType::kFloat64: return "float64";
  }
  return "type " + std::to_string(static_cast<uint32_t>(type));
}

GgufValue GgufValue::unsigned_value(GgufValueType type, uint64_t v) {
  GgufValue out;
  out.type_ = out.element_ = type;
  out.unsigned_ = {v};
  return out;
}

GgufValue GgufValue::signed_value(GgufValueType type, int64_t v) {
  GgufValue out;
  out.type_ = out.element_ = type;
  out.signed_ = {v};
  return out;
}

GgufValue GgufValue::float_value(GgufValueType type, double v) {
  GgufValue out;
  out.type_ = out.element_ = type;
  out.floats_ = {v};
  return out;
}

GgufValue GgufValue::string(std::string v) {
  GgufValue out;
  out.type_ = out.element_ = GgufValueType::kString;
  out.strings_.push_back(std::move(v));
  return out;
}

GgufValue GgufValue::unsigned_array(GgufValueType element, std::vector<uint64_t> values) {
  if (!is_unsigned_kind(element))
    fail("GGUF array of ", gguf_value_type_name(element), ": expected an unsigned type or bool");
  for (uint64_t v : values)
    if (v > unsigned_max(element))
      fail("GGUF array value ", v, " does not fit ", gguf_value_type_name(element));
  GgufValue out;
  out.type_ = GgufValueType::kArray;
  out.element_ = element;
  out.unsigned_ = std::move(values);
  return out;
}

GgufValue GgufValue::signed_array(GgufValueType element, std::vector<int64_t> values) {
  if (!is_signed_kind(element))
    fail("GGUF array of ", gguf_value_type_name(element), ": expected a signed integer type");
  const auto [lo, hi] = signed_range(element);
  for (int64_t v : values)
    if (v < lo || v > hi) fail("GGUF array value ", v, " does not fit ", gguf_value_type_name(element));
  GgufValue out;
  out.type_ = GgufValueType::kArray;
  out.element_ = element;
  out.signed_ = std::move(values);
  return out;
}

GgufValue GgufValue::float_array(GgufValueType element, std::vector<double> values) {
  if (!is_float_kind(element))
    fail("GGUF array of ", gguf_value_type_name(element), ": expected float32 or float64");
  // Keep what will be written: a float32 array holds float32-rounded values.
  if (element == GgufValueType::kFloat32)
    for (double& v : values) v = static_cast<double>(static_cast<float>(v));
  GgufValue out;
  out.type_ = GgufValueType::kArray;
  out.element_ = element;
  out.floats_ = std::move(values);
  return out;
}

GgufValue GgufValue::bool_array(const std::vector<bool>& values) {
  std::vector<uint64_t> bits(values.begin(), values.end());
  return unsigned_array(GgufValueType::kBool, std::move(bits));
}

GgufValue GgufValue::string_array(std::vector<std::string> values) {
  GgufValue out;
  out.type_ = GgufValueType::kArray;
  out.element_ = GgufValueType::kString;
  out.strings_ = std::move(values);
  return out;
}

size_t GgufValue::size() const {
  if (!is_array()) return 1;
  if (is_unsigned_kind(element_)) return unsigned_.size();
  if (is_signed_kind(element_)) return signed_.size();
  if (is_float_kind(element_)) return floats_.size();
  return strings_.size();
}

std::optional<int64_t> GgufValue::as_int(size_t i) const {
  if (i >= size()) return std::nullopt;
  if (is_signed_kind(element_)) return signed_[i];
  if (is_unsigned_kind(element_) && element_ != GgufValueType::kBool &&
      unsigned_[i] <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return static_cast<int64_t>(unsigned_[i]);
  return std::nullopt;
}

std::optional<uint64_t> GgufValue::as_uint(size_t i) const {
  if (i >= size()) return std::nullopt;
  if (is_unsigned_kind(element_) && element_ != GgufValueType::kBool) return unsigned_[i];
  if (is_signed_kind(element_) && signed_[i] >= 0) return static_cast<uint64_t>(signed_[i]);
  return std::nullopt;
}

std::optional<double> GgufValue::as_float(size_t i) const {
  if (i >= size() || !is_float_kind(element_)) return std::nullopt;
  return floats_[i];
}

std::optional<bool> GgufValue::as_bool(size_t i) const {
  if (i >= size() || element_ != GgufValueType::kBool) return std::nullopt;
  return unsigned_[i] != 0;
}

const std::string* GgufValue::as_string(size_t i) const {
  if (i >= size() || element_ != GgufValueType::kString) return nullptr;
  return &strings_[i];
}

std::string GgufValue::describe() const {
  if (!is_array()) return gguf_value_type_name(type_);
  return "array of " + std::to_string(size()) + " " + gguf_value_type_name(element_);
}

bool GgufValue::operator==(const GgufValue& other) const {
  if (type_ != other.type_ || element_ != other.element_ || unsigned_ != other.unsigned_ ||
      signed_ != other.signed_ || strings_ != other.strings_ || floats_.size() != other.floats_.size())
    return false;
  // Bitwise, so that a NaN read back equals the NaN written.
  for (size_t i = 0; i < floats_.size(); ++i)
    if (double_bits(floats_[i]) != double_bits(other.floats_[i])) return false;
  return true;
}

void GgufMetadata::set(const std::string& key, GgufValue value) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    entries_[it->second].second = std::move(value);
    return;
  }
  index_[key] = entries_.size();
  entries_.emplace_back(key, std::move(value));
}

const GgufValue* GgufMetadata::find(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

bool GgufMetadata::erase(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(it->second));
  index_.clear();
  for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].first] = i;
  return true;
}

}  // namespace dha::io
