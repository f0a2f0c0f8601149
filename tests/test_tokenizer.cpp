// Tests for the tokenizers: a hand-made llama2.c vocab (merge order, byte
// fallback, flags), the stories260K and LLaMA-2 fixtures, and malformed files.
#include "dha/tokenizer.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "dha/error.h"
#include "test_util.h"

namespace {

using dha::Error;
using dha::load_tokenizer;
using dha::Tokenizer;
using dha::test::shared_path;
using dha::test::TempDir;
using Ids = std::vector<int32_t>;
using Vocab = std::vector<std::pair<std::string, float>>;

const char* kTok512 = "models/stories260K/tok512.bin";
const char* kLlama2Model = "models/llama2-tokenizer/tokenizer.model";

void append_i32(std::string& out, int32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void append_f32(std::string& out, float v) { out.append(reinterpret_cast<const char*>(&v), 4); }

std::string serialize_llama2c(const Vocab& vocab, int32_t max_len) {
  std::string out;
  append_i32(out, max_len);
  for (const auto& [piece, score] : vocab) {
    append_f32(out, score);
    append_i32(out, static_cast<int32_t>(piece.size()));
    out += piece;
  }
  return out;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The ids of the hand-made vocab below.
enum : int32_t {
  kSpace = 259, kA, kB, kAB, kSpaceAB, kC, kBC, kSpaceA, kAA, kCC, kSnowman, kVocabSize
};

// <unk>, BOS, EOS and the 256 byte tokens as llama2.c exports them, then a few
// pieces whose scores make merge order differ from left-to-right order.
Vocab tiny_vocab() {
  Vocab v = {{"<unk>", 0.f}, {"\n<s>\n", 0.f}, {"\n</s>\n", 0.f}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v.emplace_back(name, 0.f);
  }
  v.emplace_back(" ", -1.f);
  v.emplace_back("a", -2.f);
  v.emplace_back("b", -3.f);
  v.emplace_back("ab", 4.f);
  v.emplace_back(" ab", 6.f);
  v.emplace_back("c", -4.f);
  v.emplace_back("bc", 5.f);
  v.emplace_back(" a", 3.f);
  v.emplace_back("aa", 1.f);
  v.emplace_back("cc", -1e10f);  // run.c's search starts at -1e10 with '>': never merged
  v.emplace_back("\xE2\x98\x83", -5.f);  // a snowman, one 3-byte code point
  return v;
}

// A direct transcription of run.c's encode (rescan all pairs after every merge),
// used as the reference for the library's heap-based merging.
Ids naive_run_c_encode(const Vocab& vocab, const std::string& text, bool bos, bool eos) {
  std::map<std::string, int32_t> lookup;
  for (size_t i = 0; i < vocab.size(); ++i) lookup.emplace(vocab[i].first, static_cast<int32_t>(i));
  const auto find = [&](const std::string& s) {
    auto it = lookup.find(s);
    return it == lookup.end() ? -1 : it->second;
  };
  Ids t;
  if (bos) t.push_back(1);
  if (!text.empty()) t.push_back(find(" "));
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((text[i] & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
    const int32_t id = find(buf);
    if (id != -1) t.push_back(id);
    else
      for (char c : buf) t.push_back(static_cast<unsigned char>(c) + 3);
    buf.clear();
  }
  while (true) {
    float best = -1e10;
    int32_t best_id = -1;
    int best_idx = -1;
    for (int i = 0; i + 1 < static_cast<int>(t.size()); ++i) {
      const int32_t id = find(vocab[static_cast<size_t>(t[static_cast<size_t>(i)])].first +
                              vocab[static_cast<size_t>(t[static_cast<size_t>(i) + 1])].first);
      if (id != -1 && vocab[static_cast<size_t>(id)].second > best) {
        best = vocab[static_cast<size_t>(id)].second;
        best_id = id;
        best_idx = i;
      }
    }
    if (best_idx == -1) break;
    t[static_cast<size_t>(best_idx)] = best_id;
    t.erase(t.begin() + best_idx + 1);
  }
  if (eos) t.push_back(2);
  return t;
}

Vocab read_llama2c_vocab(const std::string& path) {
  const std::string bytes = read_file(path);
  Vocab v;
  size_t off = 4;
  while (off + 8 <= bytes.size()) {
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + off, 4);
    std::memcpy(&len, bytes.data() + off + 4, 4);
    off += 8;
    v.emplace_back(bytes.substr(off, static_cast<size_t>(len)), score);
    off += static_cast<size_t>(len);
  }
  return v;
}

// The error message of `body`, or a failure if it did not throw dha::Error.
template <typename F>
std::string error_of(F&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a dha::Error";
  return "";
}

class TinyTokenizer {
 public:
  TinyTokenizer() {
    write_file(dir.file("tokenizer.bin"), serialize_llama2c(tiny_vocab(), 16));
    tok = load_tokenizer(dir.file("tokenizer.bin"));
  }
  TempDir dir;
  std::unique_ptr<Tokenizer> tok;
};

TEST(Llama2cTokenizer, LoadsHandMadeVocab) {
  TinyTokenizer t;
  EXPECT_EQ(t.tok->vocab_size(), kVocabSize);
  EXPECT_EQ(t.tok->bos_id(), 1);
  EXPECT_EQ(t.tok->eos_id(), 2);
  EXPECT_EQ(t.tok->path(), t.dir.file("tokenizer.bin"));
}

TEST(Llama2cTokenizer, DummyPrefixAndMergesByScore) {
  TinyTokenizer t;
  // " ","a","b": "ab"(4) beats " a"(3), then " ab"(6).
  EXPECT_EQ(t.tok->encode("ab", false, false), (Ids{kSpaceAB}));
  // " ","a","b","c": "bc"(5) is merged first although " a" and "ab" lie to its
  // left; then " a"; " abc" is not in the vocab.
  EXPECT_EQ(t.tok->encode("abc", false, false), (Ids{kSpaceA, kBC}));
  // Equal scores: the leftmost pair wins ("aa" at 1 before "aa" at 2).
  EXPECT_EQ(t.tok->encode("aaaa", false, false), (Ids{kSpaceA, kAA, kA}));
  // A pair scoring -1e10 never merges; " c" is not in the vocab.
  EXPECT_EQ(t.tok->encode("cc", false, false), (Ids{kSpace, kC, kC}));
  // A whole code point in the vocab is one token.
  EXPECT_EQ(t.tok->encode("\xE2\x98\x83", false, false), (Ids{kSpace, kSnowman}));
}

TEST(Llama2cTokenizer, ByteFallbackAndFlags) {
  TinyTokenizer t;
  // "é" (C3 A9) is not in the vocab: one token per byte, id = byte + 3.
  EXPECT_EQ(t.tok->encode("\xC3\xA9", false, false), (Ids{kSpace, 0xC3 + 3, 0xA9 + 3}));
  EXPECT_EQ(t.tok->encode("ab", true, false), (Ids{1, kSpaceAB}));
  EXPECT_EQ(t.tok->encode("ab", false, true), (Ids{kSpaceAB, 2}));
  EXPECT_EQ(t.tok->encode("ab", true, true), (Ids{1, kSpaceAB, 2}));
  EXPECT_EQ(t.tok->encode("", true, false), (Ids{1}));
  EXPECT_EQ(t.tok->encode("", false, false), (Ids{}));
  EXPECT_EQ(t.tok->encode("", true, true), (Ids{1, 2}));
}

TEST(Llama2cTokenizer, DecodePieceAndRoundTrip) {
  TinyTokenizer t;
  EXPECT_EQ(t.tok->decode_piece(1, kSpaceAB), "ab");  // space dropped after BOS
  EXPECT_EQ(t.tok->decode_piece(kA, kSpaceAB), " ab");
  EXPECT_EQ(t.tok->decode_piece(kA, 'A' + 3), "A");  // "<0x41>" is the byte itself
  EXPECT_EQ(t.tok->decode_piece(kA, 1), "\n<s>\n");
  EXPECT_NE(error_of([&] { t.tok->decode_piece(1, kVocabSize); }).find("outside the vocab"),
            std::string::npos);
  EXPECT_THROW(t.tok->decode_piece(1, -1), Error);
  for (const std::string text : {"ab", "abc ab", "aaaa cc", "caf\xC3\xA9 \xE2\x98\x83!", "x\ny"}) {
    EXPECT_EQ(t.tok->decode(t.tok->encode(text, true, true)), text);
    EXPECT_EQ(t.tok->decode(t.tok->encode(text, false, false)), text);
  }
}

TEST(Llama2cTokenizer, HeapMergesMatchNaiveRunC) {
  TinyTokenizer t;
  const Vocab vocab = tiny_vocab();
  const std::vector<std::string> alphabet = {"a", "a", "b", "c", " ", "\xC3\xA9", "\xE2\x98\x83",
                                             "\n", "\xA9", "\xF0\x9F\x98\x80"};
  std::mt19937 rng(7);
  for (int trial = 0; trial < 500; ++trial) {
    std::string text;
    const int len = static_cast<int>(rng() % 24);
    for (int i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    ASSERT_EQ(t.tok->encode(text, true, trial % 2 == 0),
              naive_run_c_encode(vocab, text, true, trial % 2 == 0))
        << "text: " << text;
  }
}

TEST(Llama2cTokenizer, Stories260K) {
  DHA_REQUIRE_SHARED(kTok512);
  auto tok = load_tokenizer(shared_path(kTok512), 512);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->encode("", true, false), (Ids{1}));
  const std::string once = "Once upon a time";
  EXPECT_EQ(tok->decode(tok->encode(once, true, false)), once);
  const std::string lily = "Once upon a time, there was a little girl named Lily.";
  const Ids ids = tok->encode(lily, true, false);
  ASSERT_GT(ids.size(), 5u);
  EXPECT_EQ(ids[0], 1);
  for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 512) << id;
  EXPECT_EQ(tok->decode(ids), lily);

  // Expected ids from an independent Python transcription of run.c's encode()
  // (naive pair rescans, float32 scores) run on tok512.bin; not from this code.
  EXPECT_EQ(tok->encode(once, true, false), (Ids{1, 403, 407, 261, 378}));
  EXPECT_EQ(ids, (Ids{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
                      426}));
  EXPECT_EQ(tok->encode("She loved to play outside in the park.", true, false),
            (Ids{1, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433,
                 426}));
  const std::string odd = "Tom said: \"H\xC3\xA9llo, w\xC3\xB6rld!\" 123\n  end";
  EXPECT_EQ(tok->encode(odd, true, false),
            (Ids{1, 274, 287, 336, 467, 313, 440, 485, 306, 414, 432, 263, 198, 185, 420, 341, 443,
                 436, 410, 475, 479, 472, 13, 410, 344, 264}));
  EXPECT_EQ(tok->decode(tok->encode(odd, true, false)), odd);
}

TEST(Llama2cTokenizer, Stories260KMatchesNaiveRunCOnRandomText) {
  DHA_REQUIRE_SHARED(kTok512);
  auto tok = load_tokenizer(shared_path(kTok512), 512);
  const Vocab vocab = read_llama2c_vocab(shared_path(kTok512));
  ASSERT_EQ(vocab.size(), 512u);
  const std::string letters = "aeiouthsnrldwy  ,.TLO\n";
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const int len = static_cast<int>(rng() % 60);
    for (int i = 0; i < len; ++i) text += letters[rng() % letters.size()];
    ASSERT_EQ(tok->encode(text, true, false), naive_run_c_encode(vocab, text, true, false))
        << "text: " << text;
    ASSERT_EQ(tok->decode(tok->encode(text, true, false)), text);
  }
}

TEST(SentencepieceTokenizer, Llama2) {
  DHA_REQUIRE_SHARED(kLlama2Model);
  auto tok = load_tokenizer(shared_path(kLlama2Model), 32000);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->encode("Hello world", true, false), (Ids{1, 15043, 3186}));
  EXPECT_EQ(tok->encode("Hello world", false, true), (Ids{15043, 3186, 2}));
  EXPECT_EQ(tok->encode("", true, false), (Ids{1}));
  EXPECT_EQ(tok->decode_piece(1, 15043), "Hello");
  EXPECT_EQ(tok->decode_piece(15043, 3186), " world");
  EXPECT_EQ(tok->decode_piece(15043, 13), "\n");  // byte piece <0x0A>
  EXPECT_EQ(tok->decode_piece(15043, 2), "");     // control pieces decode to nothing
  EXPECT_THROW(tok->decode_piece(1, 32000), Error);
  for (const std::string text :
       {"Hello world", "Once upon a time, there was a little girl named Lily.",
        "caf\xC3\xA9 \xE2\x98\x83 \xE4\xBD\xA0\xE5\xA5\xBD\n\ttabs", "x"}) {
    EXPECT_EQ(tok->decode(tok->encode(text, true, true)), text);
  }
}

TEST(TokenizerLoad, VocabMismatch) {
  DHA_REQUIRE_SHARED(kTok512);
  DHA_REQUIRE_SHARED(kLlama2Model);
  const std::string bin = error_of([] { load_tokenizer(shared_path(kTok512), 500); });
  EXPECT_NE(bin.find("holds 512 tokens but the model's vocab is 500"), std::string::npos) << bin;
  EXPECT_NE(bin.find("tok512.bin"), std::string::npos) << bin;
  const std::string more = error_of([] { load_tokenizer(shared_path(kTok512), 600); });
  EXPECT_NE(more.find("holds 512 tokens but the model's vocab is 600"), std::string::npos) << more;
  const std::string sp = error_of([] { load_tokenizer(shared_path(kLlama2Model), 32001); });
  EXPECT_NE(sp.find("tokenizer has 32000 tokens but the model's vocab is 32001"), std::string::npos)
      << sp;
}

TEST(TokenizerLoad, DetectsFormatByContent) {
  DHA_REQUIRE_SHARED(kTok512);
  DHA_REQUIRE_SHARED(kLlama2Model);
  TempDir dir;
  write_file(dir.file("tok"), read_file(shared_path(kTok512)));
  EXPECT_EQ(load_tokenizer(dir.file("tok"), 512)->vocab_size(), 512);
  // A misnamed sentencepiece model still loads.
  write_file(dir.file("sp.bin"), read_file(shared_path(kLlama2Model)));
  EXPECT_EQ(load_tokenizer(dir.file("sp.bin"))->encode("Hello world", true, false),
            (Ids{1, 15043, 3186}));
}

TEST(TokenizerLoad, MalformedFiles) {
  TempDir dir;
  const std::string missing = error_of([&] { load_tokenizer(dir.file("nope.model")); });
  EXPECT_EQ(missing, dir.file("nope.model") + ": no such file");

  std::string garbage;
  std::mt19937 rng(3);
  for (int i = 0; i < 5000; ++i) garbage.push_back(static_cast<char>(rng()));
  for (const char* name : {"garbage", "garbage.bin", "garbage.model"}) {
    write_file(dir.file(name), garbage);
    const std::string e = error_of([&] { load_tokenizer(dir.file(name)); });
    EXPECT_EQ(e.rfind(dir.file(name) + ": ", 0), 0u) << e;
  }
  const std::string e = error_of([&] { load_tokenizer(dir.file("garbage")); });
  EXPECT_NE(e.find("neither a sentencepiece model nor a llama2.c tokenizer.bin"), std::string::npos)
      << e;
  write_file(dir.file("empty.bin"), "");
  EXPECT_THROW(load_tokenizer(dir.file("empty.bin")), Error);
  EXPECT_THROW(load_tokenizer(dir.path()), Error);  // a directory

  // Cut inside an entry: the score and length of token 3 are there, its bytes are not.
  const std::string whole = serialize_llama2c(tiny_vocab(), 16);
  const size_t cut = 4 + (8 + 5) + (8 + 5) + (8 + 6) + 8 + 2;
  write_file(dir.file("cut.bin"), whole.substr(0, cut));
  const std::string trunc = error_of([&] { load_tokenizer(dir.file("cut.bin"), kVocabSize); });
  EXPECT_NE(trunc.find("cut.bin: not a valid llama2.c tokenizer.bin (token 3 has length 6"), std::string::npos) << trunc;
  write_file(dir.file("cut2.bin"), whole.substr(0, cut - 8));  // inside the score/length
  EXPECT_NE(error_of([&] { load_tokenizer(dir.file("cut2.bin")); }).find("ends inside token 3"),
            std::string::npos);
  // Cut at an entry boundary: well-formed, but too few tokens for the model.
  write_file(dir.file("short.bin"), whole.substr(0, cut - 10));
  EXPECT_NE(error_of([&] { load_tokenizer(dir.file("short.bin"), kVocabSize); })
                .find("holds 3 tokens but the model's vocab is " + std::to_string(kVocabSize)),
            std::string::npos);
  EXPECT_EQ(load_tokenizer(dir.file("short.bin"))->vocab_size(), 3);

  Vocab bad = tiny_vocab();
  write_file(dir.file("long.bin"), serialize_llama2c(bad, 4));  // "<0x00>" is longer than 4
  EXPECT_NE(error_of([&] { load_tokenizer(dir.file("long.bin")); }).find("max_token_length is 4"),
            std::string::npos);
  std::string negative = serialize_llama2c({{"<unk>", 0.f}}, 16);
  append_f32(negative, 0.f);
  append_i32(negative, -5);
  write_file(dir.file("negative.bin"), negative);
  EXPECT_NE(error_of([&] { load_tokenizer(dir.file("negative.bin")); }).find("has length -5"),
            std::string::npos);
  std::string header = serialize_llama2c({}, -1);
  write_file(dir.file("header.bin"), header);
  EXPECT_THROW(load_tokenizer(dir.file("header.bin")), Error);
}

TEST(TokenizerLoad, NoDummyPrefixTokenIsAnError) {
  TempDir dir;
  write_file(dir.file("t.bin"), serialize_llama2c({{"<unk>", 0.f}, {"<s>", 0.f}, {"</s>", 0.f}}, 8));
  auto tok = load_tokenizer(dir.file("t.bin"));
  EXPECT_EQ(tok->encode("", true, true), (Ids{1, 2}));
  EXPECT_THROW(tok->encode("a", true, false), Error);
  // A vocab too small for BOS must not be indexed past its end.
  write_file(dir.file("one.bin"), serialize_llama2c({{" ", 0.f}}, 8));
  auto one = load_tokenizer(dir.file("one.bin"));
  EXPECT_EQ(one->encode("  ", false, false), (Ids{0, 0, 0}));
  EXPECT_THROW(one->encode("  ", true, false), Error);
  EXPECT_THROW(one->encode("a", false, false), Error);  // byte fallback id 100
}

TEST(FindTokenizer, BesideOrInsideModel) {
  TempDir dir;
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.path(), 512), "");
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.file("model.bin"), 512), "");
  write_file(dir.file("tok512.bin"), "x");
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.file("model.bin"), 512), dir.file("tok512.bin"));
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.file("model.bin"), 32000), "");
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.path(), 512), "");
  write_file(dir.file("tokenizer.bin"), "x");
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.path(), 512), dir.file("tokenizer.bin"));
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.file("model.bin"), 512), dir.file("tokenizer.bin"));
  write_file(dir.file("tokenizer.model"), "x");
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.path(), 512), dir.file("tokenizer.model"));
  EXPECT_EQ(dha::find_tokenizer_for_model(dir.file("model.bin"), 512), dir.file("tokenizer.model"));
}

}  // namespace
