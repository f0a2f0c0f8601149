// ggml tensor types (ids, names, block geometry as in ggml.h / gguf-py's
// GGML_QUANT_SIZES) and dequantization of the block formats this toolkit reads.
#include <cstring>

#include <c10/util/Half.h>
#include <torch/types.h>

#include "dha/error.h"
#include "dha/io/gguf.h"

namespace dha::io {
namespace {

constexpr int64_t kQk = 32;   // elements per block of the legacy quant types
constexpr int64_t kQkK = 256;  // elements per super-block of the k-quants

// Every type a current ggml can write, so that a file holding one parses (and
// its byte ranges are checked) even where its tensors cannot be dequantized.
// Removed ids (4, 5, 31-33, 36-38) are absent: they mark a corrupt or ancient file.
constexpr GgmlTypeInfo kTypes[] = {
    {0, "F32", 1, 4},
    {1, "F16", 1, 2},
    {2, "Q4_0", kQk, 2 + 16},
    {3, "Q4_1", kQk, 2 + 2 + 16},
    {6, "Q5_0", kQk, 2 + 4 + 16},
    {7, "Q5_1", kQk, 2 + 2 + 4 + 16},
    {8, "Q8_0", kQk, 2 + 32},
    {9, "Q8_1", kQk, 4 + 4 + 32},
    {10, "Q2_K", kQkK, 2 + 2 + kQkK / 16 + kQkK / 4},
    {11, "Q3_K", kQkK, 2 + kQkK / 4 + kQkK / 8 + 12},
    {12, "Q4_K", kQkK, 2 + 2 + kQkK / 2 + 12},
    {13, "Q5_K", kQkK, 2 + 2 + kQkK / 2 + kQkK / 8 + 12},
    {14, "Q6_K", kQkK, 2 + kQkK / 2 + kQkK / 4 + kQkK / 16},
    {15, "Q8_K", kQkK, 4 + kQkK + kQkK / 8},
    {16, "IQ2_XXS", kQkK, 2 + kQkK / 4},
    {17, "IQ2_XS", kQkK, 2 + kQkK / 4 + kQkK / 32},
    {18, "IQ3_XXS", kQkK, 2 + kQkK / 4 + kQkK / 8},
    {19, "IQ1_S", kQkK, 2 + kQkK / 8 + kQkK / 16},
    {20, "IQ4_NL", kQk, 2 + 16},
    {21, "IQ3_S", kQkK, 2 + kQkK / 4 + kQkK / 8 + kQkK / 32 + 4},
    {22, "IQ2_S", kQkK, 2 + kQkK / 4 + kQkK / 16},
    {23, "IQ4_XS", kQkK, 2 + 2 + kQkK / 2 + kQkK / 64},
    {24, "I8", 1, 1},
    {25, "I16", 1, 2},
    {26, "I32", 1, 4},
    {27, "I64", 1, 8},
    {28, "F64", 1, 8},
    {29, "IQ1_M", kQkK, kQkK / 8 + kQkK / 16 + kQkK / 32},
    {30, "BF16", 1, 2},
    {34, "TQ1_0", kQkK, 2 + 4 * 13},
    {35, "TQ2_0", kQkK, 2 + 64},
    {39, "MXFP4", kQk, 1 + 16},
};

constexpr const char* kSupportedList = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

// A float16 field of a block (unaligned in the mapping), widened exactly.
float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, sizeof bits);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

}  // namespace

const GgmlTypeInfo* ggml_type_info(uint32_t id) {
  for (const auto& t : kTypes)
    if (t.id == id) return &t;
  return nullptr;
}

bool ggml_type_supported(uint32_t id) {
  return id == kGgmlF32 || id == kGgmlF16 || id == kGgmlBF16 || id == kGgmlQ8_0 || id == kGgmlQ4_0 ||
         id == kGgmlQ4_1;
}

std::string ggml_type_label(uint32_t id) {
  const GgmlTypeInfo* info = ggml_type_info(id);
  if (!info) return "unknown type " + std::to_string(id);
  return std::string(info->name) + " (type " + std::to_string(id) + ")";
}

torch::Tensor ggml_dequantize(uint32_t type, const uint8_t* data, int64_t n_bytes, int64_t n_elements,
                              const std::string& where) {
  if (!ggml_type_supported(type))
    fail(where, ": ", ggml_type_label(type), " is not supported; supported: ", kSupportedList);
  const GgmlTypeInfo& info = *ggml_type_info(type);
  if (n_elements < 0 || n_elements % info.block_elements != 0)
    fail(where, ": ", n_elements, " elements are not a whole number of ", info.name, " blocks of ",
         info.block_elements);
  const int64_t n_blocks = n_elements / info.block_elements;
  if (n_bytes != n_blocks * info.block_bytes)
    fail(where, ": ", n_bytes, " bytes hold ", info.name, " data, expected ", n_blocks * info.block_bytes,
         " for ", n_elements, " elements");

  // Plain floats: exact widening (float16 and bfloat16 to float32 lose nothing).
  if (type == kGgmlF32 || type == kGgmlF16 || type == kGgmlBF16) {
    const torch::ScalarType stored =
        type == kGgmlF32 ? torch::kFloat32 : type == kGgmlF16 ? torch::kHalf : torch::kBFloat16;
    torch::Tensor t = torch::empty({n_elements}, stored);
    if (n_bytes > 0) std::memcpy(t.data_ptr(), data, static_cast<size_t>(n_bytes));
    return t.to(torch::kFloat32);
  }

  // Block formats, one single-threaded pass. The products are exact in
  // float32 (a 4- or 8-bit integer times a float16 has at most 19 significant
  // bits), so the only rounding is Q4_1's "+ m", and a compiler's fused
  // multiply-add gives the same floats as gguf-py's separate multiply and add.
  torch::Tensor out = torch::empty({n_elements}, torch::kFloat32);
  float* y = out.data_ptr<float>();
  for (int64_t b = 0; b < n_blocks; ++b, data += info.block_bytes, y += kQk) {
    if (type == kGgmlQ8_0) {  // {float16 d; int8 q[32]}: x = q * d
      const float d = half_at(data);
      for (int64_t j = 0; j < kQk; ++j) y[j] = static_cast<float>(static_cast<int8_t>(data[2 + j])) * d;
    } else if (type == kGgmlQ4_0) {  // {float16 d; uint8 qs[16]}: x = (nibble - 8) * d
      const float d = half_at(data);
      const uint8_t* qs = data + 2;
      for (int64_t j = 0; j < kQk / 2; ++j) {  // low nibbles are elements 0-15, high ones 16-31
        y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
        y[j + kQk / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
      }
    } else {  // Q4_1 {float16 d; float16 m; uint8 qs[16]}: x = nibble * d + m
      const float d = half_at(data), m = half_at(data + 2);
      const uint8_t* qs = data + 4;
      for (int64_t j = 0; j < kQk / 2; ++j) {
        y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
        y[j + kQk / 2] = static_cast<float>(qs[j] >> 4) * d + m;
      }
    }
  }
  return out;
}

}  // namespace dha::io
