// Tests for the safetensors reader/writer: bit-exact round trips, and one test
// per kind of malformed file, each written byte by byte.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <torch/types.h>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::expect_one_line_error;
using dha::io::NamedTensors;
using dha::io::SafetensorsFile;
using dha::io::save_safetensors;

namespace {

// u64 little-endian header length | header | data, exactly as given.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               uint64_t header_len_override = UINT64_MAX) {
  const uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  bytes += header;
  bytes += data;
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Expects opening `path` to throw a dha::Error naming the file and containing `needle`.
void expect_open_error(const std::string& path, const std::string& needle) {
  try {
    SafetensorsFile file(path);
    ADD_FAILURE() << "expected a dha::Error containing: " << needle;
  } catch (const dha::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(path + ": ", 0), 0u) << "message: " << m;
    EXPECT_NE(m.find(needle), std::string::npos) << "message: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "message: " << m;
  }
}

template <typename T>
torch::Tensor from_bits(const std::vector<T>& bits, torch::ScalarType int_type) {
  return torch::from_blob(const_cast<T*>(bits.data()), {static_cast<int64_t>(bits.size())},
                          torch::TensorOptions().dtype(int_type))
      .clone();
}

// Saves `t`, reads it back, and checks dtype, shape and the raw bits.
void expect_bit_exact_round_trip(const torch::Tensor& t, torch::ScalarType bits_type) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"t", t}});
  SafetensorsFile file(path);
  torch::Tensor back = file.tensor("t");
  EXPECT_EQ(back.scalar_type(), t.scalar_type());
  EXPECT_EQ(back.sizes(), t.sizes());
  EXPECT_TRUE(back.is_contiguous());
  EXPECT_TRUE(torch::equal(back.view(bits_type), t.contiguous().view(bits_type)));
}

}  // namespace

// ---- round trips --------------------------------------------------------------

TEST(Safetensors, RoundTripF32BitExact) {
  // NaN with payloads, both infinities, -0, a subnormal, 1, max finite.
  std::vector<int32_t> bits = {0x7FC00001,
                               static_cast<int32_t>(0xFFC12345u),
                               0x7F800000,
                               static_cast<int32_t>(0xFF800000u),
                               static_cast<int32_t>(0x80000000u),
                               0x00000001,
                               0x3F800000,
                               0x7F7FFFFF};
  expect_bit_exact_round_trip(from_bits(bits, torch::kInt).view(torch::kFloat).reshape({2, 4}),
                              torch::kInt);
  expect_bit_exact_round_trip(torch::randn({3, 5}), torch::kInt);
}

TEST(Safetensors, RoundTripF16BitExact) {
  std::vector<int16_t> bits = {0x7E01, static_cast<int16_t>(0xFE55), 0x7C00,
                               static_cast<int16_t>(0xFC00), static_cast<int16_t>(0x8000),
                               0x0001, 0x3C00, 0x7BFF};
  expect_bit_exact_round_trip(from_bits(bits, torch::kShort).view(torch::kHalf).reshape({4, 2}),
                              torch::kShort);
  expect_bit_exact_round_trip(torch::randn({7}).to(torch::kHalf), torch::kShort);
}

TEST(Safetensors, RoundTripBF16BitExact) {
  std::vector<int16_t> bits = {0x7FC1, static_cast<int16_t>(0xFF81), 0x7F80,
                               static_cast<int16_t>(0xFF80), static_cast<int16_t>(0x8000),
                               0x0001, 0x3F80, 0x7F7F};
  expect_bit_exact_round_trip(from_bits(bits, torch::kShort).view(torch::kBFloat16).reshape({2, 2, 2}),
                              torch::kShort);
  expect_bit_exact_round_trip(torch::randn({2, 3}).to(torch::kBFloat16), torch::kShort);
}

TEST(Safetensors, EmptyAndScalarTensors) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"empty", torch::empty({0})},
                          {"scalar", torch::tensor(3.5f).to(torch::kHalf)},
                          {"zero_size", torch::empty({2, 0, 3}, torch::kBFloat16)},
                          {"after", torch::ones({2})}});
  SafetensorsFile file(path);
  torch::Tensor empty = file.tensor("empty");
  EXPECT_EQ(empty.sizes(), (std::vector<int64_t>{0}));
  EXPECT_EQ(empty.scalar_type(), torch::kFloat);
  torch::Tensor scalar = file.tensor("scalar");
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.scalar_type(), torch::kHalf);
  EXPECT_EQ(scalar.item<float>(), 3.5f);
  EXPECT_TRUE(file.entry("scalar").shape.empty());
  EXPECT_EQ(file.tensor("zero_size").sizes(), (std::vector<int64_t>{2, 0, 3}));
  EXPECT_TRUE(torch::equal(file.tensor("after"), torch::ones({2})));
}

TEST(Safetensors, NonContiguousInputIsStoredContiguously) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  torch::Tensor t = torch::arange(12, torch::kFloat).reshape({3, 4}).t();
  ASSERT_FALSE(t.is_contiguous());
  save_safetensors(path, {{"t", t}, {"slice", t.select(0, 1)}});
  SafetensorsFile file(path);
  EXPECT_TRUE(torch::equal(file.tensor("t"), t));
  EXPECT_TRUE(torch::equal(file.tensor("slice"), t.select(0, 1)));
}

TEST(Safetensors, MetadataRoundTrip) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "h\u00e9llo \"q\""}};
  save_safetensors(path, {{"w", torch::zeros({2})}}, metadata);
  SafetensorsFile file(path);
  EXPECT_EQ(file.metadata(), metadata);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"w"}));  // metadata is not a tensor
}

TEST(Safetensors, NamesSortedAndHeaderKeepsGivenOrder) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"z", torch::zeros({1})}, {"a", torch::ones({2})}, {"m", torch::zeros({3})}});
  SafetensorsFile file(path);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "m", "z"}));
  EXPECT_TRUE(file.contains("m"));
  EXPECT_FALSE(file.contains("q"));
  EXPECT_TRUE(file.metadata().empty());

  const std::string bytes = dha::io::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_LT(header.find("\"z\""), header.find("\"a\""));
  EXPECT_LT(header.find("\"a\""), header.find("\"m\""));
  EXPECT_EQ(header.find("__metadata__"), std::string::npos);
  EXPECT_EQ(file.entry("z").begin, 0u);  // data laid out in the given order
  EXPECT_EQ(file.entry("a").begin, 4u);
}

TEST(Safetensors, TensorOutlivesFile) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"w", torch::arange(6, torch::kFloat)}});
  torch::Tensor w;
  {
    SafetensorsFile file(path);
    w = file.tensor("w");
  }
  EXPECT_TRUE(torch::equal(w, torch::arange(6, torch::kFloat)));
}

TEST(Safetensors, ReadsHandWrittenFile) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  const float values[2] = {1.5f, -2.0f};
  write_raw(path, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"a":"b"}})",
            std::string(reinterpret_cast<const char*>(values), 8));
  SafetensorsFile file(path);
  EXPECT_TRUE(torch::equal(file.tensor("x"), torch::tensor({1.5f, -2.0f})));
  EXPECT_EQ(file.metadata().at("a"), "b");
}

TEST(Safetensors, MissingTensorNameThrows) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"w", torch::zeros({1})}});
  SafetensorsFile file(path);
  expect_one_line_error([&] { file.tensor("nope"); }, path + ": no tensor named 'nope'");
}

// ---- malformed files ------------------------------------------------------------

TEST(Safetensors, MissingFile) {
  dha::test::TempDir dir;
  expect_open_error(dir.file("absent.safetensors"), "cannot open");
}

TEST(Safetensors, FileShorterThan8Bytes) {
  dha::test::TempDir dir;
  const std::string path = dir.file("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  expect_open_error(path, "file is 3 bytes");
}

TEST(Safetensors, TruncatedDataSection) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"w", torch::ones({4, 4})}});
  fs::resize_file(path, fs::file_size(path) - 4);
  expect_open_error(path, "tensor 'w' data_offsets [0, 64] extend past the end of the data section (60 bytes");
}

// Each malformed file, written byte by byte as u64 header length | header |
// data, gets one error naming the file and what is wrong.
TEST(Safetensors, MalformedHeadersAreOneLineErrors) {
  struct Case {
    const char* name;
    std::string header, data;
    uint64_t header_len;  // UINT64_MAX: the header's own length
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"HeaderLengthLargerThanFile", "{}", "", 1000, "header length 1000 exceeds the file size 10"},
      {"HeaderLengthZero", "", "abcd", UINT64_MAX, "header length is 0"},
      {"HeaderNotJson", "{\"x\": not json", "", UINT64_MAX, "header is not valid JSON"},
      {"HeaderNotObject", "[1, 2]", "", UINT64_MAX, "header is a JSON array (expected a JSON object)"},
      {"DeeplyNestedHeader", std::string(100000, '['), "", UINT64_MAX, "nests deeper"},
      {"OffsetsOutOfBounds", R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})", std::string(16, '\0'), UINT64_MAX, "tensor 'x' data_offsets [16, 32] extend past the end of the data section"},
      {"OffsetsDoNotMatchShapeAndDtype", R"({"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", std::string(16, '\0'), UINT64_MAX, "tensor 'x' data_offsets [0, 12] do not match dtype F32 and shape [2, 2] "
                    "(expected 16 bytes"},
      {"OffsetsBeginAfterEnd", R"({"x":{"dtype":"F16","shape":[2],"data_offsets":[8,4]}})", std::string(8, '\0'), UINT64_MAX, "begin after end"},
      {"OffsetsMalformed", R"({"x":{"dtype":"F16","shape":[2],"data_offsets":[-4,0]}})", std::string(8, '\0'), UINT64_MAX, "tensor 'x' data_offsets [-4,0] is malformed"},
      {"OverlappingRanges", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", std::string(24, '\0'), UINT64_MAX, "tensors 'a' [0, 16] and 'b' [8, 24] overlap"},
      {"UnsupportedDtypeF64", R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", std::string(16, '\0'), UINT64_MAX, "unsupported dtype F64 for tensor 'x' (supported: F32, F16, BF16)"},
      {"UnknownDtype", R"({"x":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0'), UINT64_MAX, "unknown dtype Q7 for tensor 'x'"},
      {"MissingDtypeField", R"({"x":{"shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'), UINT64_MAX, "tensor 'x' has no \"dtype\" field"},
      {"EntryNotObject", R"({"x":[1,2]})", "", UINT64_MAX, "tensor 'x' is a array"},
      {"NegativeShapeEntry", R"({"x":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}})", std::string(16, '\0'), UINT64_MAX, "tensor 'x' shape [-1,4] has entry -1 (expected non-negative integers)"},
      {"ShapeOverflow", R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", "", UINT64_MAX, "is too large"},
      {"MetadataNonStringValue", R"({"__metadata__":{"k":1},"x":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", std::string(4, '\0'), UINT64_MAX, "__metadata__ value for key 'k' is a number 1 (expected a string)"},
      {"MetadataNotObject", R"({"__metadata__":"text"})", "", UINT64_MAX, "__metadata__ is a string (expected an object of strings)"},
  };
  dha::test::TempDir dir;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.file(std::string(c.name) + ".safetensors");
    write_raw(path, c.header, c.data, c.header_len);
    expect_open_error(path, c.needle);
  }
}

// ---- writer errors ------------------------------------------------------------

TEST(Safetensors, WriterRejectsInt64) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  expect_one_line_error([&] { save_safetensors(path, {{"ids", torch::arange(4, torch::kLong)}}); },
               path + ": tensor 'ids' has dtype Long (supported: float32, float16, bfloat16)");
  EXPECT_FALSE(fs::exists(path));
}

TEST(Safetensors, WriterRejectsDuplicateNames) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  expect_one_line_error([&] { save_safetensors(path, {{"w", torch::zeros({1})}, {"w", torch::ones({1})}}); },
               path + ": duplicate tensor 'w'");
  EXPECT_FALSE(fs::exists(path));
}

TEST(Safetensors, WriterRejectsReservedName) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  expect_one_line_error([&] { save_safetensors(path, {{"__metadata__", torch::zeros({1})}}); }, "reserved");
}
