// Byte-level BPE: tokenizer.json / GGUF-vector loading, the Hugging Face encode
// pipeline (added tokens, normalizer, pre-tokenizer, rank-ordered merges with a
// word cache), byte-level decoding and writing tokenizer.json back.
#include "dha/tokenizer_bpe.h"

#include <algorithm>
#include <array>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <queue>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "pretokenize.h"

namespace dha {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

// Ids beyond this are refused before a table of that size is allocated; the
// largest real vocabularies are a few hundred thousand tokens.
constexpr int64_t kMaxVocab = int64_t{1} << 21;
// Words longer than this are not cached (as in Hugging Face); the cache stops
// growing at kMaxCachedWords entries, which bounds its memory to tens of MB.
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCachedWords = size_t{1} << 18;

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// Added-token matching as Hugging Face's aho-corasick with LeftmostLongest:
// non-overlapping matches, each the longest token at the leftmost position.
class TokenMatcher {
 public:
  struct Match {
    size_t begin, end, token;  // token: index into the added-token list
  };

  void add(const std::string& content, size_t token) {
    if (content.empty()) return;
    auto& bucket = by_first_[static_cast<unsigned char>(content[0])];
    for (const auto& [c, t] : bucket)
      if (c == content) return;  // the first token with this content wins
    bucket.emplace_back(content, token);
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  void find(std::string_view text, std::vector<Match>& out) const {
    out.clear();
    if (empty_) return;
    for (size_t pos = 0; pos < text.size();) {
      const auto& bucket = by_first_[static_cast<unsigned char>(text[pos])];
      size_t advance = 1;
      for (const auto& [content, token] : bucket)
        if (text.compare(pos, content.size(), content) == 0) {
          out.push_back({pos, pos + content.size(), token});
          advance = content.size();
          break;
        }
      pos += advance;
    }
  }

 private:
  std::array<std::vector<std::pair<std::string, size_t>>, 256> by_first_;
  bool empty_ = true;
};

// Rust's char::is_alphanumeric (plus '_') decides single_word boundaries in
// Hugging Face; letters and numbers by general category are used here.
bool is_word_char(uint32_t cp) { return cp == '_' || bpe::is_alphanumeric_cp(cp); }

uint32_t last_cp(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  uint32_t cp = 0;
  return bpe::utf8_sequence(s, i, &cp) ? cp : 0xFFFD;
}

uint32_t first_cp(std::string_view s) {
  uint32_t cp = 0;
  return bpe::utf8_sequence(s, 0, &cp) ? cp : 0xFFFD;
}

// Byte length of the whitespace at the end / start of `s`.
size_t trailing_space(std::string_view s) {
  size_t n = s.size();
  while (n > 0) {
    size_t i = n - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    uint32_t cp = 0;
    if (!bpe::utf8_sequence(s, i, &cp) || !bpe::is_whitespace_cp(cp)) break;
    n = i;
  }
  return s.size() - n;
}
size_t leading_space(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0;
    const size_t len = bpe::utf8_sequence(s, i, &cp);
    if (!len || !bpe::is_whitespace_cp(cp)) break;
    i += len;
  }
  return i;
}

// One piece of text: an added token (token >= 0) or text to tokenize.
struct Piece {
  size_t begin, end;
  int32_t token;
};

template <typename T>
T get_field(const json& j, const char* key, T fallback, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    fail(where, ".", key, ": has the wrong JSON type (", j.at(key).type_name(), ")");
  }
}

json parse_json(const std::string& text, const std::string& path) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    fail(path, ": not valid JSON (", what, ")");
  }
}

// A token named by tokenizer_config.json: a string, or an AddedToken object.
std::string config_token(const json& config, const char* key, const std::string& where) {
  if (!config.contains(key) || config.at(key).is_null()) return "";
  const json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  fail(where, ": ", key, " is neither a string nor an object with a string \"content\"");
}

}  // namespace

struct ByteLevelBpeTokenizer::Impl {
  std::string source;
  bool from_json_file = false;  // read from a tokenizer.json (not built from GGUF metadata)

  // Model: vocab, merges ((left, right) -> (rank, merged id)) and options.
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::pair<std::string, std::string>> merge_list;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::array<int32_t, 256> byte_id{};  // the vocab id of each byte's alphabet character
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::string unk_token;  // empty: none
  int32_t unk_id = -1;

  std::vector<bpe::NormalForm> normal_forms;
  bpe::PreTokenizer pre;

  std::vector<AddedToken> added;
  TokenMatcher raw_matcher;         // normalized=false tokens, matched in the raw text
  TokenMatcher normalized_matcher;  // normalized=true tokens, matched after normalization

  // id -> tokenizer.json spelling and the bytes it decodes to; present[id] is
  // false for ids that no token has.
  std::vector<std::string> id_token;
  std::vector<std::string> id_bytes;
  std::vector<bool> present;

  int32_t bos = -1, eos = -1;
  bool add_bos = false, add_eos = false;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void finish(const std::string& where);
  void encode_text(std::string_view raw, std::vector<int32_t>& out) const;
  void encode_valid(std::string_view text, std::vector<int32_t>& out) const;
  void encode_pretokenized(std::string_view text, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view word, bool spelled, bool use_cache, std::vector<int32_t>& out) const;
  void split_added(std::string_view text, const TokenMatcher& matcher, std::vector<Piece>& pieces) const;
};

// Tables derived from vocab / added tokens, and the consistency checks.
void ByteLevelBpeTokenizer::Impl::finish(const std::string& where) {
  int64_t size = 0;
  for (const auto& [token, id] : vocab) size = std::max<int64_t>(size, int64_t{id} + 1);
  for (const AddedToken& t : added) size = std::max<int64_t>(size, int64_t{t.id} + 1);
  id_token.assign(static_cast<size_t>(size), "");
  id_bytes.assign(static_cast<size_t>(size), "");
  present.assign(static_cast<size_t>(size), false);
  for (const auto& [token, id] : vocab) {
    id_token[id] = token;
    present[id] = true;
    // A character outside the byte alphabet: the token's own UTF-8, as
    // Hugging Face's ByteLevel decoder does.
    if (!bpe::byte_level_decode(token, &id_bytes[id])) id_bytes[id] = token;
  }
  for (size_t i = 0; i < added.size(); ++i) {
    const AddedToken& t = added[i];
    id_token[t.id] = t.content;
    id_bytes[t.id] = t.content;  // the literal text, so that decode gives the input back
    present[t.id] = true;
    (t.normalized ? normalized_matcher : raw_matcher)
        .add(t.normalized ? bpe::normalize(t.content, normal_forms) : t.content, i);
  }
  const bpe::ByteAlphabet& alphabet = bpe::byte_alphabet();
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab.find(alphabet.byte_char[b]);
    byte_id[b] = it == vocab.end() ? -1 : it->second;
  }
  if (!unk_token.empty()) {
    const auto it = vocab.find(unk_token);
    unk_id = it == vocab.end() ? -1 : it->second;
  }
  for (const int32_t id : {bos, eos})
    if (id >= size) fail(where, ": BOS/EOS id ", id, " is outside the vocab [0, ", size, ")");
  if (size == 0) fail(where, ": the vocab is empty");
}

// Raw text -> added tokens and text pieces, the pieces split further at bytes
// that are not well-formed UTF-8.
void ByteLevelBpeTokenizer::Impl::encode_text(std::string_view raw, std::vector<int32_t>& out) const {
  std::vector<Piece> pieces;
  split_added(raw, raw_matcher, pieces);
  for (const Piece& p : pieces) {
    if (p.token >= 0) {
      out.push_back(p.token);
      continue;
    }
    const std::string_view text = raw.substr(p.begin, p.end - p.begin);
    size_t run = 0;
    for (size_t i = 0; i < text.size();) {
      uint32_t cp = 0;
      const size_t len = bpe::utf8_sequence(text, i, &cp);
      if (len) {
        i += len;
        continue;
      }
      if (i > run) encode_valid(text.substr(run, i - run), out);
      bpe_word(text.substr(i, 1), /*spelled=*/false, /*use_cache=*/false, out);
      run = ++i;
    }
    if (text.size() > run) encode_valid(text.substr(run), out);
  }
}

void ByteLevelBpeTokenizer::Impl::encode_valid(std::string_view text, std::vector<int32_t>& out) const {
  if (normal_forms.empty() && normalized_matcher.empty()) {
    encode_pretokenized(text, out);
    return;
  }
  const std::string normalized = bpe::normalize(text, normal_forms);
  std::vector<Piece> pieces;
  split_added(normalized, normalized_matcher, pieces);
  for (const Piece& p : pieces) {
    if (p.token >= 0)
      out.push_back(p.token);
    else
      encode_pretokenized(std::string_view(normalized).substr(p.begin, p.end - p.begin), out);
  }
}

void ByteLevelBpeTokenizer::Impl::encode_pretokenized(std::string_view text,
                                                      std::vector<int32_t>& out) const {
  std::vector<std::string_view> words;
  std::deque<std::string> storage;
  pre.split(text, words, storage);
  const bool spelled = pre.words_spelled();
  for (const std::string_view w : words) bpe_word(w, spelled, /*use_cache=*/true, out);
}

// Hugging Face's AddedVocabulary::find_matches: single_word, lstrip and rstrip
// adjust or reject each leftmost-longest match.
void ByteLevelBpeTokenizer::Impl::split_added(std::string_view text, const TokenMatcher& matcher,
                                              std::vector<Piece>& pieces) const {
  pieces.clear();
  std::vector<TokenMatcher::Match> matches;
  matcher.find(text, matches);
  size_t start_offset = 0;
  for (const auto& m : matches) {
    const AddedToken& t = added[m.token];
    size_t start = m.begin, stop = m.end;
    if (t.single_word) {
      const bool start_space = start == 0 || !is_word_char(last_cp(text.substr(0, start)));
      const bool stop_space = stop == text.size() || !is_word_char(first_cp(text.substr(stop)));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) start = std::max(start - trailing_space(text.substr(0, start)), start_offset);
    if (t.rstrip) stop += leading_space(text.substr(stop));
    if (start < start_offset) continue;  // inside what an rstrip before it took
    if (start_offset < start) pieces.push_back({start_offset, start, -1});
    pieces.push_back({start, stop, t.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) pieces.push_back({start_offset, text.size(), -1});
}

// One pre-tokenized word -> ids: Hugging Face's BPE::merge_word and
// Word::merge_all. Symbols start as the word's characters; a heap yields the
// lowest-rank pair, leftmost among equal ranks. An entry is acted on when its
// left symbol is still alive and the pair now at that position merges into the
// same id (the staleness test of `tokenizers`, kept as is so that the ids match).
void ByteLevelBpeTokenizer::Impl::bpe_word(std::string_view word, bool spelled, bool use_cache,
                                           std::vector<int32_t>& out) const {
  if (ignore_merges) {
    const auto it = vocab.find(spelled ? std::string(word) : bpe::byte_level_encode(word));
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = use_cache && word.size() <= kMaxCachedWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }

  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  };
  bool pending_unk = false;
  const auto flush_unk = [&] {
    if (pending_unk) add(unk_id);
    pending_unk = false;
  };
  const bpe::ByteAlphabet& alphabet = bpe::byte_alphabet();
  std::string ch, raw_char;
  for (size_t i = 0; i < word.size();) {
    int32_t id = -1;
    size_t len = 1;
    if (!spelled) {
      id = byte_id[static_cast<unsigned char>(word[i])];
      if (id < 0) ch = alphabet.byte_char[static_cast<unsigned char>(word[i])];
    } else {
      uint32_t cp = 0;
      len = std::max<size_t>(1, bpe::utf8_sequence(word, i, &cp));
      ch.assign(word.substr(i, len));
      const auto it = vocab.find(ch);
      if (it != vocab.end()) id = it->second;
    }
    i += len;
    if (id >= 0) {
      flush_unk();
      add(id);
      continue;
    }
    // A character the vocab lacks: byte fallback tokens, else <unk>, else dropped.
    if (byte_fallback) {
      std::vector<int32_t> bytes;
      for (const char c : ch) {
        static const char* kHex = "0123456789ABCDEF";
        const auto b = static_cast<unsigned char>(c);
        const auto it = vocab.find(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">");
        if (it == vocab.end()) break;
        bytes.push_back(it->second);
      }
      if (bytes.size() == ch.size()) {
        for (const int32_t b : bytes) add(b);
        continue;
      }
    }
    if (!unk_token.empty()) {
      if (unk_id < 0)
        fail(source, ": the text needs the unknown token \"", unk_token, "\", which is not in the vocab");
      if (!(pending_unk && fuse_unk)) flush_unk();
      pending_unk = true;
    }
  }
  flush_unk();
  if (!symbols.empty()) symbols.back().next = -1;

  struct Candidate {
    int32_t rank, pos, merged;
  };
  struct Worse {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, Worse> heap;
  const auto find_merge = [&](int32_t left, int32_t right) -> const std::pair<int32_t, int32_t>* {
    const auto it = merges.find(pair_key(symbols[left].id, symbols[right].id));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i)
    if (const auto* m = find_merge(i, i + 1)) heap.push({m->first, i, m->second});
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const auto* current = find_merge(top.pos, right_pos);
    if (!current || current->second != top.merged) continue;
    left.id = top.merged;
    symbols[right_pos].alive = false;
    left.next = symbols[right_pos].next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0)
      if (const auto* m = find_merge(left.prev, top.pos)) heap.push({m->first, left.prev, m->second});
    if (left.next >= 0)
      if (const auto* m = find_merge(top.pos, left.next)) heap.push({m->first, top.pos, m->second});
  }

  const size_t first = out.size();
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() < kMaxCachedWords)
      cache.emplace(std::move(key), std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

// ---- construction ------------------------------------------------------------

ByteLevelBpeTokenizer::ByteLevelBpeTokenizer() : impl_(std::make_unique<Impl>()) {}
ByteLevelBpeTokenizer::~ByteLevelBpeTokenizer() = default;

std::unique_ptr<ByteLevelBpeTokenizer> ByteLevelBpeTokenizer::load(const std::string& path) {
  return from_json(path, io::read_file(path));
}

std::unique_ptr<ByteLevelBpeTokenizer> ByteLevelBpeTokenizer::from_json(const std::string& path,
                                                                        const std::string& text) {
  std::unique_ptr<ByteLevelBpeTokenizer> tok(new ByteLevelBpeTokenizer());
  Impl& m = *tok->impl_;
  m.source = path;
  m.from_json_file = true;
  tok->path_ = path;
  const json j = parse_json(text, path);
  if (!j.is_object()) fail(path, ": expected a JSON object (a tokenizer.json)");

  // ---- model
  if (!j.contains("model") || !j.at("model").is_object()) fail(path, ": model is missing or not an object");
  const json& model = j.at("model");
  const std::string model_type = get_field<std::string>(model, "type", "BPE", path + ": model");
  if (model_type != "BPE") fail(path, ": model type \"", model_type, "\" is not supported (only BPE)");
  const double dropout = get_field<double>(model, "dropout", 0.0, path + ": model");
  if (dropout != 0.0) fail(path, ": model.dropout is ", dropout, "; BPE dropout is random and not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::string v = get_field<std::string>(model, key, "", path + ": model");
    if (!v.empty()) fail(path, ": model.", key, " is \"", v, "\"; byte-level BPE with it is not supported");
  }
  m.fuse_unk = get_field<bool>(model, "fuse_unk", false, path + ": model");
  m.byte_fallback = get_field<bool>(model, "byte_fallback", false, path + ": model");
  m.ignore_merges = get_field<bool>(model, "ignore_merges", false, path + ": model");
  m.unk_token = get_field<std::string>(model, "unk_token", "", path + ": model");
  if (!model.contains("vocab") || !model.at("vocab").is_object())
    fail(path, ": model.vocab is missing or not an object (token -> id)");
  for (const auto& [token, id] : model.at("vocab").items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxVocab)
      fail(path, ": model.vocab[\"", token, "\"] is ", id.dump(), ", expected an id in [0, ", kMaxVocab, ")");
    m.vocab[token] = id.get<int32_t>();
  }
  if (!model.contains("merges") || !model.at("merges").is_array())
    fail(path, ": model.merges is missing or not an array");
  const json& merges = model.at("merges");
  m.merge_list.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& e = merges[i];
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos)
        fail(path, ": model.merges[", i, "] \"", s, "\" has no space between its two tokens");
      m.merge_list.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      m.merge_list.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      fail(path, ": model.merges[", i, "] is neither \"left right\" nor [left, right]");
    }
  }

  // ---- added tokens
  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    if (!j.at("added_tokens").is_array()) fail(path, ": added_tokens is not an array");
    const json& list = j.at("added_tokens");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = path + ": added_tokens[" + std::to_string(i) + "]";
      const json& a = list[i];
      if (!a.is_object() || !a.contains("id") || !a.at("id").is_number_integer() || !a.contains("content") ||
          !a.at("content").is_string())
        fail(where, " needs an integer \"id\" and a string \"content\"");
      AddedToken t;
      const int64_t id = a.at("id").get<int64_t>();
      if (id < 0 || id >= kMaxVocab) fail(where, ".id is ", id, ", expected [0, ", kMaxVocab, ")");
      t.id = static_cast<int32_t>(id);
      t.content = a.at("content").get<std::string>();
      t.single_word = get_field<bool>(a, "single_word", false, where);
      t.lstrip = get_field<bool>(a, "lstrip", false, where);
      t.rstrip = get_field<bool>(a, "rstrip", false, where);
      t.special = get_field<bool>(a, "special", false, where);
      t.normalized = get_field<bool>(a, "normalized", !t.special, where);
      m.added.push_back(std::move(t));
    }
  }

  // ---- normalizer
  const std::function<void(const json&, const std::string&)> read_normalizer = [&](const json& n,
                                                                                   const std::string& field) {
    if (n.is_null()) return;
    const std::string type = n.is_object() ? get_field<std::string>(n, "type", "", path + ": " + field) : "";
    if (type == "Sequence") {
      if (!n.contains("normalizers") || !n.at("normalizers").is_array())
        fail(path, ": ", field, ".normalizers is missing or not an array");
      for (size_t i = 0; i < n.at("normalizers").size(); ++i)
        read_normalizer(n.at("normalizers")[i], field + ".normalizers[" + std::to_string(i) + "]");
    } else if (type == "NFC") {
      m.normal_forms.push_back(bpe::NormalForm::kNfc);
    } else if (type == "NFD") {
      m.normal_forms.push_back(bpe::NormalForm::kNfd);
    } else if (type == "NFKC") {
      m.normal_forms.push_back(bpe::NormalForm::kNfkc);
    } else if (type == "NFKD") {
      m.normal_forms.push_back(bpe::NormalForm::kNfkd);
    } else {
      fail(path, ": ", field, " type \"", type,
           "\" is not supported (supported: none, Sequence, NFC, NFD, NFKC, NFKD)");
    }
  };
  if (j.contains("normalizer")) read_normalizer(j.at("normalizer"), "normalizer");

  // ---- pre-tokenizer
  m.pre = bpe::PreTokenizer::from_json(j.contains("pre_tokenizer") ? j.at("pre_tokenizer") : json(), path);

  // ---- decoder: byte-level decoding is the only one implemented
  const std::function<void(const json&, const std::string&)> read_decoder = [&](const json& d,
                                                                                const std::string& field) {
    if (d.is_null()) return;
    const std::string type = d.is_object() ? get_field<std::string>(d, "type", "", path + ": " + field) : "";
    if (type == "ByteLevel") return;
    if (type == "Sequence" && d.contains("decoders") && d.at("decoders").is_array()) {
      for (size_t i = 0; i < d.at("decoders").size(); ++i)
        read_decoder(d.at("decoders")[i], field + ".decoders[" + std::to_string(i) + "]");
      return;
    }
    fail(path, ": ", field, " type \"", type, "\" is not supported (byte-level BPE decodes with ByteLevel)");
  };
  if (j.contains("decoder")) read_decoder(j.at("decoder"), "decoder");

  // ---- post-processor: where BOS/EOS come from when tokenizer_config.json does not say
  int32_t template_bos = -1, template_eos = -1;
  const std::function<void(const json&, const std::string&)> read_post = [&](const json& p,
                                                                             const std::string& field) {
    if (p.is_null()) return;
    const std::string where = path + ": " + field;
    const std::string type = p.is_object() ? get_field<std::string>(p, "type", "", where) : "";
    if (type == "ByteLevel") return;
    if (type == "Sequence") {
      if (!p.contains("processors") || !p.at("processors").is_array())
        fail(where, ".processors is missing or not an array");
      for (size_t i = 0; i < p.at("processors").size(); ++i)
        read_post(p.at("processors")[i], field + ".processors[" + std::to_string(i) + "]");
      return;
    }
    if (type != "TemplateProcessing")
      fail(where, " type \"", type,
           "\" is not supported (supported: ByteLevel, TemplateProcessing, Sequence)");
    if (!p.contains("single") || !p.at("single").is_array())
      fail(where, ".single is missing or not an array");
    const json& single = p.at("single");
    const auto special_id = [&](const json& item) {
      const std::string name = item.at("SpecialToken").value("id", "");
      const json& specials = p.value("special_tokens", json::object());
      if (!specials.contains(name) || !specials.at(name).contains("ids") ||
          !specials.at(name).at("ids").is_array() || specials.at(name).at("ids").size() != 1 ||
          !specials.at(name).at("ids")[0].is_number_integer())
        fail(where, ".special_tokens[\"", name, "\"] must give exactly one id");
      return specials.at(name).at("ids")[0].get<int32_t>();
    };
    size_t sequences = 0;
    std::vector<int32_t> before, after;
    for (const json& item : single) {
      if (item.is_object() && item.contains("Sequence"))
        ++sequences;
      else if (item.is_object() && item.contains("SpecialToken"))
        (sequences ? after : before).push_back(special_id(item));
      else
        fail(where, ".single holds an item that is neither a Sequence nor a SpecialToken");
    }
    if (sequences != 1 || before.size() > 1 || after.size() > 1)
      fail(where, ".single is not [BOS] $A [EOS] (", before.size(), " tokens before, ", sequences,
           " sequences, ", after.size(), " after)");
    if (!before.empty()) template_bos = before[0];
    if (!after.empty()) template_eos = after[0];
  };
  if (j.contains("post_processor")) read_post(j.at("post_processor"), "post_processor");

  m.bos = template_bos;
  m.eos = template_eos;
  m.add_bos = template_bos >= 0;
  m.add_eos = template_eos >= 0;

  // ---- merges -> ids (needs the vocab), then the derived tables
  m.merges.reserve(m.merge_list.size());
  for (size_t i = 0; i < m.merge_list.size(); ++i) {
    const auto& [a, b] = m.merge_list[i];
    const auto ia = m.vocab.find(a), ib = m.vocab.find(b), im = m.vocab.find(a + b);
    if (ia == m.vocab.end() || ib == m.vocab.end() || im == m.vocab.end())
      fail(path, ": model.merges[", i, "] \"", a, " ", b, "\": \"",
           ia == m.vocab.end()   ? a
           : ib == m.vocab.end() ? b
                                 : a + b,
           "\" is not in model.vocab");
    // As in `tokenizers`, a repeated pair keeps its last rank.
    m.merges[Impl::pair_key(ia->second, ib->second)] = {static_cast<int32_t>(i), im->second};
  }
  m.finish(path);

  // ---- tokenizer_config.json beside it
  const fs::path config_path = fs::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (fs::is_regular_file(config_path, ec)) {
    const std::string where = config_path.string();
    const json config = parse_json(io::read_file(where), where);
    if (!config.is_object()) fail(where, ": expected a JSON object");
    const auto resolve = [&](const char* key, int32_t* id) {
      const std::string name = config_token(config, key, where);
      if (name.empty()) return;
      *id = tok->token_to_id(name);
      if (*id < 0) fail(where, ": ", key, " \"", name, "\" is not a token of ", path);
    };
    resolve("bos_token", &m.bos);
    resolve("eos_token", &m.eos);
    m.add_bos = get_field<bool>(config, "add_bos_token", m.add_bos, where);
    m.add_eos = get_field<bool>(config, "add_eos_token", m.add_eos, where);
    if (m.add_bos && m.bos < 0) fail(where, ": add_bos_token is true but there is no bos_token");
    if (m.add_eos && m.eos < 0) fail(where, ": add_eos_token is true but there is no eos_token");
  }
  return tok;
}

// ---- from GGUF vectors -----------------------------------------------------------

namespace {

// Hugging Face's own patterns for the pre-tokenizers that llama.cpp names (its
// llama-vocab.cpp spells the (?i:...) groups out as [sS] etc. for its engine).
constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT: four regexes applied in turn.
constexpr const char* kDefaultPatterns[] = {
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "\\p{N}+",
    "[0-9][0-9][0-9]",
};

enum class PreFamily { kDefault, kGpt2, kDigitsGpt2, kLlama3, kQwen2 };

struct PreName {
  const char* name;
  PreFamily family;
};

// Which names llama.cpp (src/llama-vocab.cpp) gives each regex set.
constexpr PreName kPreNames[] = {
    {"default", PreFamily::kDefault},
    {"gpt2", PreFamily::kGpt2},
    {"gpt-2", PreFamily::kGpt2},
    {"phi-2", PreFamily::kGpt2},
    {"mpt", PreFamily::kGpt2},
    {"olmo", PreFamily::kGpt2},
    {"jais", PreFamily::kGpt2},
    {"smollm", PreFamily::kDigitsGpt2},
    {"starcoder", PreFamily::kDigitsGpt2},
    {"refact", PreFamily::kDigitsGpt2},
    {"command-r", PreFamily::kDigitsGpt2},
    {"codeshell", PreFamily::kDigitsGpt2},
    {"exaone", PreFamily::kDigitsGpt2},
    {"minerva-7b", PreFamily::kDigitsGpt2},
    {"llama3", PreFamily::kLlama3},
    {"llama-v3", PreFamily::kLlama3},
    {"llama-bpe", PreFamily::kLlama3},
    {"falcon3", PreFamily::kLlama3},
    {"falcon-h1", PreFamily::kLlama3},
    {"pixtral", PreFamily::kLlama3},
    {"midm-2.0", PreFamily::kLlama3},
    {"lfm2", PreFamily::kLlama3},
    {"dbrx", PreFamily::kLlama3},
    {"smaug-bpe", PreFamily::kLlama3},
    {"qwen2", PreFamily::kQwen2},
    {"stablelm2", PreFamily::kQwen2},
};

}  // namespace

std::unique_ptr<ByteLevelBpeTokenizer> ByteLevelBpeTokenizer::from_vocab(const BpeVocabSpec& spec,
                                                                         const std::string& source) {
  std::unique_ptr<ByteLevelBpeTokenizer> tok(new ByteLevelBpeTokenizer());
  Impl& m = *tok->impl_;
  m.source = source;
  tok->path_ = source;
  const auto n = static_cast<int64_t>(spec.tokens.size());
  if (n == 0) fail(source, ": tokenizer.ggml.tokens is empty");
  if (n >= kMaxVocab) fail(source, ": tokenizer.ggml.tokens has ", n, " tokens, more than ", kMaxVocab);
  if (!spec.token_types.empty() && static_cast<int64_t>(spec.token_types.size()) != n)
    fail(source, ": tokenizer.ggml.token_type has ", spec.token_types.size(), " entries for ", n, " tokens");

  const PreName* pre = nullptr;
  for (const PreName& p : kPreNames)
    if (spec.pre == p.name) pre = &p;
  if (!pre) {
    std::string known;
    for (const PreName& p : kPreNames) known += (known.empty() ? "" : ", ") + std::string(p.name);
    fail(source, ": tokenizer.ggml.pre \"", spec.pre, "\" is not supported (supported: ", known, ")");
  }
  std::vector<bpe::PreTokenizerStep> steps;
  const std::string where = source + ": tokenizer.ggml.pre " + spec.pre;
  switch (pre->family) {
    case PreFamily::kDefault:
      for (const char* p : kDefaultPatterns)
        steps.push_back(bpe::split_step(p, bpe::SplitBehavior::kIsolated, false, where));
      steps.push_back(bpe::byte_level_step(false, false));
      break;
    case PreFamily::kGpt2:
      steps.push_back(bpe::byte_level_step(false, true));
      break;
    case PreFamily::kDigitsGpt2:
      steps.push_back(bpe::digits_step(true));
      steps.push_back(bpe::byte_level_step(false, true));
      break;
    case PreFamily::kLlama3:
      steps.push_back(bpe::split_step(kLlama3Pattern, bpe::SplitBehavior::kIsolated, false, where));
      steps.push_back(bpe::byte_level_step(false, false));
      // Llama-3's tokenizer.json sets ignore_merges, and llama.cpp does the same for these names.
      m.ignore_merges = spec.pre != "dbrx" && spec.pre != "smaug-bpe";
      break;
    case PreFamily::kQwen2:
      steps.push_back(bpe::split_step(kQwen2Pattern, bpe::SplitBehavior::kIsolated, false, where));
      steps.push_back(bpe::byte_level_step(false, false));
      // Qwen2's tokenizer.json normalizes to NFC (llama.cpp skips this).
      if (spec.pre == "qwen2") m.normal_forms.push_back(bpe::NormalForm::kNfc);
      break;
  }
  m.pre = bpe::PreTokenizer::from_steps(std::move(steps), source);

  // As Hugging Face builds the vocab dict from the token list, a repeated
  // token string keeps its last id.
  for (int64_t i = 0; i < n; ++i) m.vocab[spec.tokens[static_cast<size_t>(i)]] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < static_cast<int64_t>(spec.token_types.size()); ++i) {
    const int32_t type = spec.token_types[static_cast<size_t>(i)];
    if (type != 3 && type != 4) continue;
    AddedToken t;
    t.id = static_cast<int32_t>(i);
    t.content = spec.tokens[static_cast<size_t>(i)];
    t.special = type == 3;
    t.normalized = false;
    m.added.push_back(std::move(t));
  }
  m.merge_list.reserve(spec.merges.size());
  m.merges.reserve(spec.merges.size());
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const std::string& s = spec.merges[i];
    const size_t space = s.find(' ');
    if (space == std::string::npos) fail(source, ": tokenizer.ggml.merges[", i, "] \"", s, "\" has no space");
    std::string a = s.substr(0, space), b = s.substr(space + 1);
    const auto ia = m.vocab.find(a), ib = m.vocab.find(b), im = m.vocab.find(a + b);
    if (ia == m.vocab.end() || ib == m.vocab.end() || im == m.vocab.end())
      fail(source, ": tokenizer.ggml.merges[", i, "] \"", s, "\": \"",
           ia == m.vocab.end()   ? a
           : ib == m.vocab.end() ? b
                                 : a + b,
           "\" is not a token");
    m.merges[Impl::pair_key(ia->second, ib->second)] = {static_cast<int32_t>(i), im->second};
    m.merge_list.emplace_back(std::move(a), std::move(b));
  }
  for (const auto& [id, what] :
       {std::pair{spec.bos_id, "bos"}, std::pair{spec.eos_id, "eos"}, std::pair{spec.unk_id, "unknown"}})
    if (id < -1 || id >= n)
      fail(source, ": tokenizer.ggml.", what, "_token_id ", id, " is outside [0, ", n, ")");
  m.bos = spec.bos_id;
  m.eos = spec.eos_id;
  if (spec.unk_id >= 0) m.unk_token = spec.tokens[static_cast<size_t>(spec.unk_id)];
  m.add_bos = spec.add_bos;
  m.add_eos = spec.add_eos;
  if (m.add_bos && m.bos < 0)
    fail(source, ": tokenizer.ggml.add_bos_token is true but there is no bos_token_id");
  if (m.add_eos && m.eos < 0)
    fail(source, ": tokenizer.ggml.add_eos_token is true but there is no eos_token_id");
  m.finish(source);
  return tok;
}

// ---- the Tokenizer interface -------------------------------------------------------

std::vector<int32_t> ByteLevelBpeTokenizer::encode(const std::string& text, bool bos, bool eos) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (bos) {
    if (m.bos < 0) fail(path_, ": the tokenizer has no BOS token but one was requested");
    out.push_back(m.bos);
  }
  m.encode_text(text, out);
  if (eos) {
    if (m.eos < 0) fail(path_, ": the tokenizer has no EOS token but one was requested");
    out.push_back(m.eos);
  }
  return out;
}

std::string ByteLevelBpeTokenizer::decode_piece(int32_t /*prev*/, int32_t token) const {
  const Impl& m = *impl_;
  if (token < 0 || token >= vocab_size())
    fail(path_, ": token id ", token, " is outside the vocab [0, ", vocab_size(), ")");
  if (!m.present[token]) fail(path_, ": token id ", token, " has no token (a gap in the vocab's ids)");
  return m.id_bytes[token];
}

int64_t ByteLevelBpeTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_token.size()); }
int32_t ByteLevelBpeTokenizer::bos_id() const { return impl_->bos; }
int32_t ByteLevelBpeTokenizer::eos_id() const { return impl_->eos; }
bool ByteLevelBpeTokenizer::add_bos_by_default() const { return impl_->add_bos; }
bool ByteLevelBpeTokenizer::add_eos_by_default() const { return impl_->add_eos; }

int32_t ByteLevelBpeTokenizer::document_separator_id() const {
  // GPT-2's special <|endoftext|> first: GPT-2, SmolLM / SmolLM2, StarCoder and
  // Qwen2 were pre-trained on documents each followed by it, and their chat
  // fine-tunes redeclare EOS as the end-of-turn token (SmolLM2-Instruct's GGUF:
  // eos <|im_end|>, bos <|im_start|>, while <|endoftext|> is id 0), which never
  // stood between pre-training documents. Otherwise the declared EOS, the
  // usual "EOS after every document" convention.
  for (const AddedToken& t : impl_->added)
    if (t.special && t.content == "<|endoftext|>") return t.id;
  return impl_->eos;
}

int32_t ByteLevelBpeTokenizer::token_to_id(const std::string& token) const {
  for (const AddedToken& t : impl_->added)
    if (t.content == token) return t.id;
  const auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

std::string ByteLevelBpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->present[id])
    fail(path_, ": token id ", id, " is not in the vocab");
  return impl_->id_token[id];
}

// ---- writing tokenizer.json ------------------------------------------------------------

void ByteLevelBpeTokenizer::write_files(const std::string& dir) const {
  if (!impl_->from_json_file) return write_tokenizer_json(dir);
  // The original files, so that whatever else they hold (decoder, chat template) is kept.
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path source = name == std::string("tokenizer.json") ? fs::path(path_)
                                                                   : fs::path(path_).parent_path() / name;
    std::error_code error;
    if (!fs::is_regular_file(source, error)) continue;
    fs::copy_file(source, fs::path(dir) / name, fs::copy_options::overwrite_existing, error);
    if (error) fail(source.string(), ": cannot copy into ", dir, " (", error.message(), ")");
  }
}

void ByteLevelBpeTokenizer::write_tokenizer_json(const std::string& dir) const {
  const Impl& m = *impl_;
  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ordered_json added = ordered_json::array();
  for (const AddedToken& t : m.added)
    added.push_back({{"id", t.id},
                     {"content", t.content},
                     {"single_word", t.single_word},
                     {"lstrip", t.lstrip},
                     {"rstrip", t.rstrip},
                     {"normalized", t.normalized},
                     {"special", t.special}});
  j["added_tokens"] = added;
  ordered_json normalizers = ordered_json::array();
  for (const bpe::NormalForm f : m.normal_forms) normalizers.push_back({{"type", bpe::normal_form_name(f)}});
  if (normalizers.empty())
    j["normalizer"] = nullptr;
  else if (normalizers.size() == 1)
    j["normalizer"] = normalizers[0];
  else
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", normalizers}};
  j["pre_tokenizer"] = m.pre.to_json();

  // BOS/EOS by default through a template, which both `tokenizers` and
  // transformers apply when asked to add special tokens.
  const bool with_bos = m.add_bos && m.bos >= 0, with_eos = m.add_eos && m.eos >= 0;
  if (with_bos || with_eos) {
    const auto special = [&](int32_t id, int type_id) {
      return ordered_json{{"SpecialToken", {{"id", m.id_token[id]}, {"type_id", type_id}}}};
    };
    const auto sequence = [](const char* id, int type_id) {
      return ordered_json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
    };
    ordered_json single = ordered_json::array(), pair = ordered_json::array(),
                 specials = ordered_json::object();
    for (int part = 0; part < 2; ++part) {
      if (with_bos) pair.push_back(special(m.bos, part));
      pair.push_back(sequence(part == 0 ? "A" : "B", part));
      if (with_eos) pair.push_back(special(m.eos, part));
    }
    if (with_bos) single.push_back(special(m.bos, 0));
    single.push_back(sequence("A", 0));
    if (with_eos) single.push_back(special(m.eos, 0));
    for (const int32_t id : {with_bos ? m.bos : -1, with_eos ? m.eos : -1})
      if (id >= 0)
        specials[m.id_token[id]] = {{"id", m.id_token[id]}, {"ids", {id}}, {"tokens", {m.id_token[id]}}};
    j["post_processor"] = {
        {"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
  } else {
    j["post_processor"] = nullptr;
  }
  j["decoder"] = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};

  ordered_json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = m.unk_token.empty() ? ordered_json(nullptr) : ordered_json(m.unk_token);
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = m.fuse_unk;
  model["byte_fallback"] = m.byte_fallback;
  model["ignore_merges"] = m.ignore_merges;
  // The vocab in id order (a JSON object; ids that two strings share keep the
  // string the vocab map holds).
  std::vector<std::pair<int32_t, const std::string*>> by_id;
  by_id.reserve(m.vocab.size());
  for (const auto& [token, id] : m.vocab) by_id.emplace_back(id, &token);
  std::sort(by_id.begin(), by_id.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : *a.second < *b.second;
  });
  ordered_json vocab = ordered_json::object();
  for (const auto& [id, token] : by_id) vocab[*token] = id;
  model["vocab"] = std::move(vocab);
  ordered_json merges = ordered_json::array();
  for (const auto& [a, b] : m.merge_list) merges.push_back({a, b});
  model["merges"] = std::move(merges);
  j["model"] = std::move(model);

  ordered_json config;
  config["add_bos_token"] = m.add_bos;
  config["add_eos_token"] = m.add_eos;
  config["bos_token"] = m.bos >= 0 ? ordered_json(m.id_token[m.bos]) : ordered_json(nullptr);
  config["eos_token"] = m.eos >= 0 ? ordered_json(m.id_token[m.eos]) : ordered_json(nullptr);
  if (m.unk_id >= 0) config["unk_token"] = m.unk_token;
  // transformers would otherwise rewrite " ." to "." and the like when decoding.
  config["clean_up_tokenization_spaces"] = false;
  config["tokenizer_class"] = "PreTrainedTokenizerFast";

  std::string text, config_text;
  try {
    text = j.dump(1) + "\n";
    config_text = config.dump(2) + "\n";
  } catch (const nlohmann::json::type_error& e) {
    fail(dir, ": cannot write tokenizer.json: a token is not valid UTF-8 (", e.what(), ")");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, ": cannot create the directory (", ec.message(), ")");
  io::write_file_atomic((fs::path(dir) / "tokenizer.json").string(), text);
  io::write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), config_text);
}

}  // namespace dha
