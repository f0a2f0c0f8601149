// llama2.c .bin checkpoints: a hand-written file against a forward pass written
// the llama2.c way (interleaved RoPE on the raw weights), writer round trips,
// stories260K byte-exact, and every malformed-file case.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/io/llama2c.h"
#include "dha/model.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace {

// Raw llama2.c weights as the file stores them (q/k rows interleaved).
struct RawModel {
  int32_t dim = 16, hidden = 24, layers = 2, heads = 4, kv_heads = 2, vocab = 19, seq_len = 12;
  bool tied = false;
  torch::Tensor embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls;

  int32_t head_size() const { return dim / heads; }
  int32_t kv_dim() const { return kv_heads * head_size(); }

  void randomize(uint64_t seed) {
    torch::manual_seed(seed);
    auto r = [](std::vector<int64_t> shape, double scale) { return torch::randn(shape) * scale; };
    const double s = 1.0 / std::sqrt(static_cast<double>(dim));
    embed = r({vocab, dim}, 1.0);
    rms_att = 1.0 + r({layers, dim}, 0.1);
    wq = r({layers, dim, dim}, s);
    wk = r({layers, kv_dim(), dim}, s);
    wv = r({layers, kv_dim(), dim}, s);
    wo = r({layers, dim, dim}, s);
    rms_ffn = 1.0 + r({layers, dim}, 0.1);
    w1 = r({layers, hidden, dim}, s);
    w2 = r({layers, dim, hidden}, 1.0 / std::sqrt(static_cast<double>(hidden)));
    w3 = r({layers, hidden, dim}, s);
    rms_final = 1.0 + r({dim}, 0.1);
    wcls = r({vocab, dim}, s);
  }

  std::string bytes() const {
    std::string out;
    const int32_t header[7] = {dim, hidden, layers, heads, kv_heads, tied ? vocab : -vocab, seq_len};
    out.append(reinterpret_cast<const char*>(header), sizeof(header));
    auto put = [&](const torch::Tensor& t) {
      const torch::Tensor c = t.contiguous();
      out.append(reinterpret_cast<const char*>(c.data_ptr<float>()), c.numel() * 4);
    };
    for (const auto& t : {embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final}) put(t);
    put(torch::zeros({seq_len, head_size() / 2}));  // RoPE tables: not read
    put(torch::zeros({seq_len, head_size() / 2}));
    if (!tied) put(wcls);
    return out;
  }
};

torch::Tensor rmsnorm(const torch::Tensor& x, const torch::Tensor& w) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-5) * w;
}

// run.c's rotation: consecutive pairs (2i, 2i+1) of each head rotated by pos * 10000^(-2i/hs).
torch::Tensor rope_interleaved(const torch::Tensor& x, int64_t head_size) {
  torch::Tensor out = x.clone();  // [T, n*hs]
  for (int64_t pos = 0; pos < x.size(0); ++pos)
    for (int64_t i = 0; i < x.size(1); i += 2) {
      const double freq = 1.0 / std::pow(10000.0, static_cast<double>(i % head_size) / head_size);
      const double c = std::cos(pos * freq), s = std::sin(pos * freq);
      const double v0 = x[pos][i].item<double>(), v1 = x[pos][i + 1].item<double>();
      out[pos][i] = v0 * c - v1 * s;
      out[pos][i + 1] = v0 * s + v1 * c;
    }
  return out;
}

// The llama2.c forward pass for one sequence, on the raw (interleaved) weights.
torch::Tensor reference_logits(const RawModel& m, const std::vector<int64_t>& tokens) {
  const int64_t t = tokens.size(), hs = m.head_size(), group = m.heads / m.kv_heads;
  torch::Tensor x = m.embed.index_select(0, torch::tensor(tokens));
  for (int64_t l = 0; l < m.layers; ++l) {
    const torch::Tensor h = rmsnorm(x, m.rms_att[l]);
    const torch::Tensor q = rope_interleaved(h.matmul(m.wq[l].t()), hs);
    const torch::Tensor k = rope_interleaved(h.matmul(m.wk[l].t()), hs);
    const torch::Tensor v = h.matmul(m.wv[l].t());
    torch::Tensor att = torch::zeros({t, m.dim});
    for (int64_t head = 0; head < m.heads; ++head) {
      const int64_t kv = head / group;
      const torch::Tensor qh = q.narrow(1, head * hs, hs), kh = k.narrow(1, kv * hs, hs),
                          vh = v.narrow(1, kv * hs, hs);
      torch::Tensor scores = qh.matmul(kh.t()) / std::sqrt(static_cast<double>(hs));
      scores = scores.masked_fill(torch::ones({t, t}, torch::kBool).triu(1), -INFINITY);
      att.narrow(1, head * hs, hs).copy_(torch::softmax(scores, -1).matmul(vh));
    }
    x = x + att.matmul(m.wo[l].t());
    const torch::Tensor f = rmsnorm(x, m.rms_ffn[l]);
    x = x + (torch::silu(f.matmul(m.w1[l].t())) * f.matmul(m.w3[l].t())).matmul(m.w2[l].t());
  }
  x = rmsnorm(x, m.rms_final);
  return x.matmul((m.tied ? m.embed : m.wcls).t());
}

void expect_load_error(const std::string& path, const std::string& text) {
  try {
    dha::io::load_llama2c(path);
    FAIL() << "expected an error containing '" << text << "'";
  } catch (const dha::Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "error must name the file";
  }
}

}  // namespace

class Llama2cForward : public ::testing::TestWithParam<bool> {};

TEST_P(Llama2cForward, LoadedModelEqualsTheLlama2cForwardPass) {
  torch::NoGradGuard no_grad;
  RawModel raw;
  raw.tied = GetParam();
  raw.randomize(21);
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("m.bin"), raw.bytes());
  const dha::Checkpoint ck = dha::io::load_llama2c(dir.file("m.bin"));
  EXPECT_EQ(ck.config.tied_embeddings, raw.tied);
  EXPECT_EQ(ck.config.layout.uniform_gqa_kv_heads(), raw.kv_heads);
  const std::vector<int64_t> tokens = {1, 5, 18, 3, 3, 7, 0, 11, 2};
  const torch::Tensor got = dha::make_model(ck, "m.bin")->forward(torch::tensor(tokens).unsqueeze(0))[0];
  const torch::Tensor want = reference_logits(raw, tokens);
  EXPECT_TRUE(torch::allclose(got, want, 1e-4, 1e-5))
      << "max abs diff " << (got - want).abs().max().item<double>();
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, Llama2cForward, ::testing::Bool());

TEST(Llama2c, WriterRoundTripsBitExactly) {
  dha::ModelConfig config = dha::test::tiny_config();
  config.layout = dha::HeadLayout::gqa(config.n_layers, config.n_heads, 2);
  for (bool tied : {false, true}) {
    config.tied_embeddings = tied;
    const dha::Checkpoint ck = dha::test::random_checkpoint(config, 9);
    dha::test::TempDir dir;
    dha::io::save_llama2c(dir.file("m.bin"), ck);
    const dha::Checkpoint back = dha::io::load_llama2c(dir.file("m.bin"));
    EXPECT_EQ(back.config.layout, config.layout);
    ASSERT_EQ(back.tensors.size(), ck.tensors.size());
    for (const auto& [name, t] : ck.tensors) EXPECT_TRUE(torch::equal(back.tensors.at(name), t)) << name;
  }
}

TEST(Llama2c, PermutationsAreInverse) {
  const torch::Tensor w = torch::arange(4 * 8 * 3, torch::kFloat32).view({32, 3});
  const torch::Tensor half = dha::io::interleaved_to_rotate_half(w, 4);
  EXPECT_TRUE(torch::equal(dha::io::rotate_half_to_interleaved(half, 4), w));
  // Head 0, rotate-half row 4 (second half, i = 0) is interleaved row 1.
  EXPECT_TRUE(torch::equal(half[4], w[1]));
}

TEST(Llama2c, Stories260kRewritesToTheSameBytes) {
  DHA_REQUIRE_SHARED("models/stories260K/stories260K.bin");
  const std::string path = dha::test::shared_path("models/stories260K/stories260K.bin");
  const dha::Checkpoint ck = dha::io::load_llama2c(path);
  dha::test::TempDir dir;
  dha::io::save_llama2c(dir.file("again.bin"), ck);
  const std::string original = dha::io::read_file(path), again = dha::io::read_file(dir.file("again.bin"));
  ASSERT_EQ(again.size(), original.size());
  // Header and every weight are byte-identical (the q/k permutation undone exactly).
  const int64_t c = ck.config.max_seq_len * ck.config.head_dim * 4;  // RoPE tables
  const int64_t weights_end = static_cast<int64_t>(original.size()) - c;
  EXPECT_EQ(original.compare(0, weights_end, again, 0, weights_end), 0);
  // The RoPE tables are recomputed: equal to float rounding.
  const torch::Tensor a = torch::from_blob(const_cast<char*>(original.data()) + weights_end, {c / 4}, torch::kFloat32);
  const torch::Tensor b = torch::from_blob(const_cast<char*>(again.data()) + weights_end, {c / 4}, torch::kFloat32);
  EXPECT_TRUE(torch::allclose(a, b, 0, 1e-5));
}

TEST(Llama2c, WriterRefusesADecoupledLayout) {
  dha::test::TempDir dir;
  const dha::Checkpoint ck = dha::test::random_checkpoint(dha::test::tiny_dha_config(), 1);
  EXPECT_THROW(dha::io::save_llama2c(dir.file("m.bin"), ck), dha::Error);
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.bin")));
}

TEST(Llama2cBadInput, MissingFile) { expect_load_error("/nonexistent/model.bin", "cannot open"); }

TEST(Llama2cBadInput, ShorterThanHeader) {
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("m.bin"), std::string(10, '\0'));
  expect_load_error(dir.file("m.bin"), "shorter than the 28-byte llama2.c header");
}

TEST(Llama2cBadInput, TruncatedWeights) {
  RawModel raw;
  raw.randomize(1);
  const std::string bytes = raw.bytes();
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("m.bin"), bytes.substr(0, bytes.size() - 100));
  expect_load_error(dir.file("m.bin"), "(truncated?)");
}

TEST(Llama2cBadInput, TrailingData) {
  RawModel raw;
  raw.randomize(1);
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("m.bin"), raw.bytes() + "junk");
  expect_load_error(dir.file("m.bin"), "trailing data");
}

TEST(Llama2cBadInput, HeaderWithImplausibleSizes) {
  RawModel raw;
  raw.randomize(1);
  std::string bytes = raw.bytes();
  const int32_t negative = -64;
  std::memcpy(bytes.data(), &negative, 4);  // dim
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("m.bin"), bytes);
  expect_load_error(dir.file("m.bin"), "header field dim = -64");
}

TEST(Llama2cBadInput, HeadsNotDivisibleByKvHeads) {
  RawModel raw;
  raw.randomize(1);
  std::string bytes = raw.bytes();
  const int32_t kv = 3;
  std::memcpy(bytes.data() + 16, &kv, 4);
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("m.bin"), bytes);
  expect_load_error(dir.file("m.bin"), "not divisible by n_kv_heads 3");
}

TEST(Llama2cBadInput, TextFileIsNotACheckpoint) {
  dha::test::TempDir dir;
  dha::io::write_file_atomic(dir.file("m.bin"), "Once upon a time there was a text file, not a model.\n");
  expect_load_error(dir.file("m.bin"), "is not a plausible size");
}
