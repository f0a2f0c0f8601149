// llama2.c tokenizer.bin: parsing with bounds checks, and an encoder that gives
// exactly the ids of run.c's encode() (dummy prefix, byte fallback, merges by score).
#include <cstring>
#include <queue>
#include <unordered_map>
#include <vector>

#include "tokenizer_impl.h"

namespace dha::detail {
namespace {

constexpr int32_t kBos = 1;  // run.c hard-codes these ids
constexpr int32_t kEos = 2;

// run.c starts its best-merge search at best_score = -1e10 (a float) and
// accepts only strictly greater scores, so pairs scoring <= this never merge.
const float kNoMergeScore = static_cast<float>(-1e10);

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(std::string path, std::vector<std::string> vocab, std::vector<float> scores)
      : vocab_(std::move(vocab)), scores_(std::move(scores)) {
    path_ = std::move(path);
    lookup_.reserve(vocab_.size());
    // emplace keeps the first (lowest) id when a string occurs twice.
    for (size_t i = 0; i < vocab_.size(); ++i) lookup_.emplace(vocab_[i], static_cast<int32_t>(i));
  }

  std::vector<int32_t> encode(const std::string& text, bool bos, bool eos) const override;
  std::string decode_piece(int32_t prev, int32_t token) const override;

  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.size()); }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }

 private:
  int32_t find(const std::string& s) const {
    const auto it = lookup_.find(s);
    return it == lookup_.end() ? -1 : it->second;
  }
  void merge(std::vector<int32_t>& tokens) const;

  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> lookup_;
};

std::vector<int32_t> Llama2cTokenizer::encode(const std::string& text, bool bos, bool eos) const {
  // As in run.c, BOS is part of the sequence that merges run over (a vocab
  // could merge it with what follows); EOS is appended after merging.
  if ((bos && kBos >= vocab_size()) || (eos && kEos >= vocab_size()))
    fail(path_, ": BOS/EOS requested but the vocab has only ", vocab_size(), " tokens");
  std::vector<int32_t> tokens;
  tokens.reserve(text.size() + 3);
  if (bos) tokens.push_back(kBos);
  if (!text.empty()) {
    // run.c would push id -1 here and crash later; say what is missing instead.
    const int32_t dummy = find(" ");
    if (dummy < 0) fail(path_, ": the vocab has no \" \" token for the dummy-prefix space");
    tokens.push_back(dummy);
  }

  // Same grouping as run.c: a group starts at any byte after a flush and takes
  // following continuation bytes (10xxxxxx) until it holds 4 bytes.
  std::string group;
  for (size_t i = 0; i < text.size(); ++i) {
    group.push_back(text[i]);
    const bool next_is_continuation =
        i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_is_continuation && group.size() < 4) continue;
    const int32_t id = find(group);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (const char c : group) {
        const int32_t byte_id = static_cast<int32_t>(static_cast<unsigned char>(c)) + 3;
        if (byte_id >= vocab_size())
          fail(path_, ": byte fallback needs token id ", byte_id, " but the vocab has only ",
               vocab_size(), " tokens");
        tokens.push_back(byte_id);
      }
    }
    group.clear();
  }

  merge(tokens);
  if (eos) tokens.push_back(kEos);
  return tokens;
}

// run.c rescans all adjacent pairs after every merge (quadratic, too slow for an
// evaluation corpus). This does the same merges in the same order with a heap:
// each step takes the highest-scoring mergeable pair, and among equal scores the
// leftmost one (run.c's strict '>' keeps the first). Positions are the original
// indices of each pair's left node; merges keep the left node, so the order of
// positions is the order of the current sequence and "smallest position" is
// "leftmost". Stale heap entries are recognised by per-node version counters.
void Llama2cTokenizer::merge(std::vector<int32_t>& tokens) const {
  const size_t n = tokens.size();
  if (n < 2) return;
  std::vector<size_t> next(n), prev(n);
  std::vector<uint32_t> version(n, 0);
  for (size_t i = 0; i < n; ++i) {
    next[i] = i + 1;  // n means "none"
    prev[i] = i == 0 ? n : i - 1;
  }

  struct Candidate {
    float score;
    size_t left, right;
    uint32_t left_version, right_version;
    int32_t merged;
  };
  struct Worse {
    bool operator()(const Candidate& a, const Candidate& b) const {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, Worse> heap;

  std::string joined;
  const auto consider = [&](size_t left) {
    if (left >= n || next[left] >= n) return;
    const size_t right = next[left];
    joined = vocab_[static_cast<size_t>(tokens[left])];
    joined += vocab_[static_cast<size_t>(tokens[right])];
    const int32_t id = find(joined);
    if (id < 0) return;
    const float score = scores_[static_cast<size_t>(id)];
    if (!(score > kNoMergeScore)) return;  // also rejects NaN, as run.c's '>' does
    heap.push({score, left, right, version[left], version[right], id});
  };

  for (size_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (version[c.left] != c.left_version || version[c.right] != c.right_version ||
        next[c.left] != c.right)
      continue;
    tokens[c.left] = c.merged;
    ++version[c.left];
    ++version[c.right];  // the right node is gone; its entries are now stale
    next[c.left] = next[c.right];
    if (next[c.left] < n) prev[next[c.left]] = c.left;
    if (prev[c.left] < n) consider(prev[c.left]);
    consider(c.left);
  }

  std::vector<int32_t> merged;
  merged.reserve(n);
  for (size_t i = 0; i < n; i = next[i]) merged.push_back(tokens[i]);
  tokens.swap(merged);
}

std::string Llama2cTokenizer::decode_piece(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size())
    fail(path_, ": token id ", token, " is outside the vocab [0, ", vocab_size(), ")");
  std::string piece = vocab_[static_cast<size_t>(token)];
  // After BOS sentencepiece drops the dummy-prefix space (llama2.c PR #89).
  if (prev == kBos && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  unsigned char byte;
  if (parse_byte_piece(piece, &byte)) return std::string(1, static_cast<char>(byte));
  return piece;
}

// Little-endian reads from the in-memory file; the caller checks the bounds.
int32_t read_i32(const std::string& bytes, size_t offset) {
  int32_t v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}
float read_f32(const std::string& bytes, size_t offset) {
  float v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

}  // namespace

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, const std::string& bytes,
                                                  int64_t expected_vocab) {
  // Every format error says which format the file was read as, since a .bin
  // tokenizer is easily confused with a .bin checkpoint.
  const auto format_error = [&](const std::string& what) {
    return TokenizerFormatError(path + ": not a valid llama2.c tokenizer.bin (" + what + ")");
  };
  const size_t size = bytes.size();
  if (size < 4)
    throw format_error(std::to_string(size) + " bytes, too short for the int32 max_token_length");
  const int32_t max_len = read_i32(bytes, 0);
  // Real files have max_token_length in the tens; anything beyond the file
  // itself cannot be a token length.
  if (max_len <= 0 || static_cast<size_t>(max_len) > size)
    throw format_error("header max_token_length is " + std::to_string(max_len));

  // The whole file is parsed even when expected_vocab is known, so that a
  // mismatch can say how many tokens the file really holds.
  std::vector<std::string> vocab;
  std::vector<float> scores;
  size_t offset = 4;
  const auto bad_entry = [&](const std::string& what) {
    const auto index = static_cast<int64_t>(vocab.size());
    if (expected_vocab > 0 && index >= expected_vocab)
      fail(path, ": holds ", expected_vocab, " tokens as the model's vocab expects, but then ",
           what);
    throw format_error(what);
  };
  while (offset < size) {
    const std::string index = std::to_string(vocab.size());
    if (size - offset < 8)
      bad_entry("ends inside token " + index + ": " + std::to_string(size - offset) +
                " bytes left, each token starts with float score + int32 length");
    const float score = read_f32(bytes, offset);
    const int32_t len = read_i32(bytes, offset + 4);
    offset += 8;
    if (len < 0 || len > max_len || static_cast<size_t>(len) > size - offset)
      bad_entry("token " + index + " has length " + std::to_string(len) + "; max_token_length is " +
                std::to_string(max_len) + " and " + std::to_string(size - offset) +
                " bytes are left");
    vocab.emplace_back(bytes, offset, static_cast<size_t>(len));
    scores.push_back(score);
    offset += static_cast<size_t>(len);
  }
  if (vocab.empty()) throw format_error("no tokens after the header");
  if (expected_vocab > 0 && static_cast<int64_t>(vocab.size()) != expected_vocab)
    fail(path, ": holds ", vocab.size(), " tokens but the model's vocab is ", expected_vocab);
  return std::make_unique<Llama2cTokenizer>(path, std::move(vocab), std::move(scores));
}

}  // namespace dha::detail
