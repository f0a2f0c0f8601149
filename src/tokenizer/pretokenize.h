// Private to the byte-level BPE tokenizer: UTF-8 helpers, the GPT-2 byte alphabet,
// PCRE2 regexes with Oniguruma's meaning of \s \w \h, normalizers and pre-tokenizers.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dha::bpe {

// ---- UTF-8 -------------------------------------------------------------------

// Length of the well-formed UTF-8 sequence that starts at s[i] (1..4), or 0 when
// the bytes there are not one (stray continuation byte, truncated or overlong
// sequence, surrogate, above U+10FFFF). *cp receives the code point.
size_t utf8_sequence(std::string_view s, size_t i, uint32_t* cp);
void append_utf8(std::string& out, uint32_t cp);
bool is_ascii(std::string_view s);

// ---- the GPT-2 byte alphabet ---------------------------------------------------

// bytes_to_unicode() of GPT-2: printable Latin-1 bytes stand for themselves, the
// other 68 bytes for U+0100.. in byte order. kByteChar[b] is the UTF-8 spelling.
struct ByteAlphabet {
  std::array<std::string, 256> byte_char;
  std::array<uint32_t, 256> byte_cp;
  // Code point -> byte for the 256 code points of the alphabet (-1 elsewhere).
  int byte_of(uint32_t cp) const { return cp < reverse.size() ? reverse[cp] : -1; }
  std::array<int16_t, 324> reverse;
};
const ByteAlphabet& byte_alphabet();

// The byte-level spelling of raw bytes (each byte one alphabet character).
std::string byte_level_encode(std::string_view raw);
// The bytes a byte-level spelled token stands for; false when a character is not
// in the alphabet (the token is then taken literally, as Hugging Face does).
bool byte_level_decode(std::string_view token, std::string* raw);

// Unicode general category checks used outside regexes (Digits, single_word).
bool is_numeric_cp(uint32_t cp);       // \p{N}: Nd, Nl, No
bool is_alphanumeric_cp(uint32_t cp);  // \p{L} or \p{N}
bool is_whitespace_cp(uint32_t cp);    // Unicode White_Space, as Rust's char::is_whitespace

// ---- regexes -------------------------------------------------------------------

// A Hugging Face (Oniguruma, Ruby syntax) pattern compiled by PCRE2 with UTF and
// UCP. \s \S \w \W \h \H are rewritten to Oniguruma's Unicode meaning before
// compiling (PCRE2's \s also matches U+180E, its \h is horizontal space).
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // The non-overlapping matches in `text` (well-formed UTF-8), left to right;
  // empty matches are skipped (Hugging Face drops the empty pieces they make).
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;  // as written in tokenizer.json
  std::string where_;
  void* code_ = nullptr;  // pcre2_code_8
};

// The Oniguruma -> PCRE2 rewrite (exposed for the tests).
std::string onig_to_pcre2(const std::string& pattern);

// ---- normalizers ------------------------------------------------------------------

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
// Applies the forms in order to well-formed UTF-8 (embedded NULs included).
std::string normalize(std::string_view text, const std::vector<NormalForm>& forms);
const char* normal_form_name(NormalForm f);

// ---- pre-tokenizers -----------------------------------------------------------------

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kDigits };
  Kind kind = Kind::kByteLevel;
  // Split
  std::string pattern;  // regex source or literal string
  bool pattern_is_regex = true;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  std::shared_ptr<const Regex> regex;  // Split(Regex) and ByteLevel(use_regex)
  // ByteLevel
  bool add_prefix_space = false;
  bool trim_offsets = true;
  bool use_regex = true;
  // Digits
  bool individual_digits = false;
};

// The GPT-2 pattern that ByteLevel(use_regex=true) splits with.
extern const char* const kGpt2Pattern;

// A flattened Sequence of steps with exactly one ByteLevel step. When ByteLevel
// is the last step its byte -> character mapping is left to the model, so the
// words stay raw bytes; when steps follow it, they see the mapped characters,
// as in Hugging Face, and the words are byte-level spelled.
class PreTokenizer {
 public:
  PreTokenizer() = default;
  // `j` is tokenizer.json's "pre_tokenizer"; `where` names the file for errors.
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& where);
  static PreTokenizer from_steps(std::vector<PreTokenizerStep> steps, const std::string& where);
  nlohmann::ordered_json to_json() const;

  // Appends the words of one piece of text (well-formed UTF-8, already
  // normalized). They view `text` or strings added to `storage` (a deque keeps
  // them in place), so both must outlive the words.
  void split(std::string_view text, std::vector<std::string_view>& words,
             std::deque<std::string>& storage) const;
  // True when split() returns byte-level spelled words, false for raw bytes.
  bool words_spelled() const { return byte_level_index_ + 1 < steps_.size(); }
  bool add_prefix_space() const { return steps_[byte_level_index_].add_prefix_space; }
  const std::vector<PreTokenizerStep>& steps() const { return steps_; }

 private:
  std::vector<PreTokenizerStep> steps_;
  size_t byte_level_index_ = 0;
};

PreTokenizerStep split_step(const std::string& regex, SplitBehavior behavior, bool invert,
                            const std::string& where);
PreTokenizerStep byte_level_step(bool add_prefix_space, bool use_regex);
PreTokenizerStep digits_step(bool individual_digits);

}  // namespace dha::bpe
