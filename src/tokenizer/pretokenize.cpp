// The text side of byte-level BPE: UTF-8 checks, the GPT-2 byte alphabet, PCRE2
// regexes that behave like Hugging Face's Oniguruma ones, normalization through
// utf8proc, and the Split / ByteLevel / Digits pre-tokenizers of tokenizer.json.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "pretokenize.h"

#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <stdexcept>

#include "dha/error.h"

namespace dha::bpe {

// ---- UTF-8 -------------------------------------------------------------------

size_t utf8_sequence(std::string_view s, size_t i, uint32_t* cp) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const size_t n = s.size();
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  const auto cont = [&](size_t k) { return k < n && (byte(k) & 0xC0) == 0x80; };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (!cont(i + 1)) return 0;
    *cp = (uint32_t(b0 & 0x1F) << 6) | (byte(i + 1) & 0x3F);
    return 2;
  }
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (!cont(i + 1) || !cont(i + 2)) return 0;
    const unsigned char b1 = byte(i + 1);
    if (b0 == 0xE0 && b1 < 0xA0) return 0;  // overlong
    if (b0 == 0xED && b1 > 0x9F) return 0;  // UTF-16 surrogate
    *cp = (uint32_t(b0 & 0x0F) << 12) | (uint32_t(b1 & 0x3F) << 6) | (byte(i + 2) & 0x3F);
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    const unsigned char b1 = byte(i + 1);
    if (b0 == 0xF0 && b1 < 0x90) return 0;  // overlong
    if (b0 == 0xF4 && b1 > 0x8F) return 0;  // above U+10FFFF
    *cp = (uint32_t(b0 & 0x07) << 18) | (uint32_t(b1 & 0x3F) << 12) | (uint32_t(byte(i + 2) & 0x3F) << 6) |
          (byte(i + 3) & 0x3F);
    return 4;
  }
  return 0;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_ascii(std::string_view s) {
  for (const char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// ---- the GPT-2 byte alphabet ---------------------------------------------------

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet = [] {
    ByteAlphabet a;
    a.reverse.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      a.byte_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      append_utf8(a.byte_char[b], a.byte_cp[b]);
      a.reverse[a.byte_cp[b]] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return alphabet;
}

std::string byte_level_encode(std::string_view raw) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  out.reserve(raw.size() * 2);
  for (const char c : raw) out += a.byte_char[static_cast<unsigned char>(c)];
  return out;
}

bool byte_level_decode(std::string_view token, std::string* raw) {
  const ByteAlphabet& a = byte_alphabet();
  raw->clear();
  for (size_t i = 0; i < token.size();) {
    uint32_t cp = 0;
    const size_t len = utf8_sequence(token, i, &cp);
    if (len == 0) return false;
    const int b = a.byte_of(cp);
    if (b < 0) return false;
    raw->push_back(static_cast<char>(b));
    i += len;
  }
  return true;
}

bool is_numeric_cp(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';  // ASCII needs no table lookup
  const auto c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

bool is_alphanumeric_cp(uint32_t cp) {
  const auto c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
         (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

bool is_whitespace_cp(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// ---- regexes -------------------------------------------------------------------

namespace {

// Oniguruma's Unicode classes (doc/RE): \s is [\t\n\v\f\r\x85] plus the
// separators Zs, Zl, Zp; \w is letters, marks, decimal digits and connector
// punctuation; \h is a hexadecimal digit.
constexpr const char* kSpaceItems = "\\t-\\r\\x{85}\\p{Z}";
constexpr const char* kWordItems = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
constexpr const char* kHexItems = "0-9a-fA-F";

pcre2_code* as_code(void* p) { return static_cast<pcre2_code*>(p); }

}  // namespace

std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  int depth = 0;  // inside a character class when > 0
  for (size_t i = 0; i < p.size();) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      const char* items = d == 's' || d == 'S'   ? kSpaceItems
                          : d == 'w' || d == 'W' ? kWordItems
                          : d == 'h' || d == 'H' ? kHexItems
                                                 : nullptr;
      const bool negated = d == 'S' || d == 'W' || d == 'H';
      if (items && depth == 0) {
        out += negated ? "[^" : "[";
        out += items;
        out += "]";
      } else if (items && !negated) {
        out += items;
      } else if (items) {
        // [..\S..]: a negated class inside a class has no PCRE2 spelling here.
        throw std::invalid_argument(std::string("\\") + d + " inside a character class");
      } else if (d == 'u' && i + 6 <= p.size() &&
                 std::all_of(p.begin() + i + 2, p.begin() + i + 6,
                             [](char x) { return std::isxdigit(static_cast<unsigned char>(x)) != 0; })) {
        out += "\\x{" + p.substr(i + 2, 4) + "}";  // Oniguruma's \uHHHH
        i += 6;
        continue;
      } else {
        out += c;
        out += d;
      }
      i += 2;
      continue;
    }
    if (c == '[') {
      if (depth > 0 && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX [:alpha:]
        const size_t end = p.find(":]", i + 2);
        if (end == std::string::npos) throw std::invalid_argument("unterminated [: in a character class");
        out.append(p, i, end + 2 - i);
        i = end + 2;
        continue;
      }
      if (depth > 0) throw std::invalid_argument("a nested character class (Oniguruma set syntax)");
      depth = 1;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ] is literal
      continue;
    }
    if (c == ']' && depth > 0) depth = 0;
    if (c == '&' && depth > 0 && i + 1 < p.size() && p[i + 1] == '&')
      throw std::invalid_argument("class intersection (&&)");
    out += c;
    ++i;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& where) : pattern_(pattern), where_(where) {
  std::string translated;
  try {
    translated = onig_to_pcre2(pattern);
  } catch (const std::invalid_argument& e) {
    fail(where, ": regex \"", pattern, "\" uses ", e.what(), ", which is not supported");
  }
  int error = 0;
  PCRE2_SIZE offset = 0;
  // MULTILINE: in Oniguruma's Ruby syntax ^ and $ are line anchors.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &error, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail(where, ": regex \"", pattern, "\" does not compile (", reinterpret_cast<const char*>(message),
         " at offset ", offset, ")");
  }
  // JIT is an optimisation only: without it pcre2_match interprets.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(as_code(code_)); }

namespace {

// One match block per thread, reused: only the whole match's offsets are read
// (a block smaller than the capture count still receives them; rc is then 0).
pcre2_match_data* thread_match_data() {
  struct Holder {
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(md); }
  };
  thread_local Holder holder;
  return holder.md;
}

}  // namespace

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  pcre2_match_data* md = thread_match_data();
  if (!md) fail(where_, ": out of memory for a regex match");
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc = pcre2_match(as_code(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its backtracking on the heap
      rc = pcre2_match(as_code(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                       nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      fail(where_, ": regex \"", pattern_, "\" failed on a text of ", text.size(), " bytes (",
           reinterpret_cast<const char*>(message), ")");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t begin = ov[0], end = ov[1];
    if (end > begin) {
      out.emplace_back(begin, end);
      start = end;
    } else {
      // An empty match: step over one character and search again.
      if (begin >= text.size()) break;
      uint32_t cp;
      start = begin + std::max<size_t>(1, utf8_sequence(text, begin, &cp));
    }
  }
}

// ---- normalizers ------------------------------------------------------------------

const char* normal_form_name(NormalForm f) {
  switch (f) {
    case NormalForm::kNfc:
      return "NFC";
    case NormalForm::kNfd:
      return "NFD";
    case NormalForm::kNfkc:
      return "NFKC";
    case NormalForm::kNfkd:
      return "NFKD";
  }
  return "?";
}

std::string normalize(std::string_view text, const std::vector<NormalForm>& forms) {
  if (forms.empty() || is_ascii(text)) return std::string(text);  // ASCII is invariant under all four
  std::string current(text);
  for (const NormalForm f : forms) {
    int options = UTF8PROC_STABLE;
    if (f == NormalForm::kNfc || f == NormalForm::kNfkc)
      options |= UTF8PROC_COMPOSE;
    else
      options |= UTF8PROC_DECOMPOSE;
    if (f == NormalForm::kNfkc || f == NormalForm::kNfkd) options |= UTF8PROC_COMPAT;
    utf8proc_uint8_t* mapped = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(current.data()),
                                            static_cast<utf8proc_ssize_t>(current.size()), &mapped,
                                            static_cast<utf8proc_option_t>(options));
    if (n < 0)
      fail("utf8proc could not ", normal_form_name(f), "-normalize a text of ", current.size(), " bytes (",
           utf8proc_errmsg(n), ")");
    current.assign(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
    std::free(mapped);
  }
  return current;
}

// ---- pre-tokenizers -----------------------------------------------------------------

const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

namespace {

struct Segment {
  size_t begin, end;
  bool match;
};

// Hugging Face's SplitDelimiterBehavior applied to the pieces of one text
// (normalizer/pattern.rs and normalized.rs of `tokenizers`).
void apply_behavior(std::vector<Segment>& segs, SplitBehavior behavior, bool invert) {
  if (invert)
    for (Segment& s : segs) s.match = !s.match;
  std::vector<Segment> out;
  out.reserve(segs.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      return;
    case SplitBehavior::kRemoved:
      for (const Segment& s : segs)
        if (!s.match) out.push_back(s);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Segment& s : segs) {
        if (s.match && !previous_match && !out.empty())
          out.back().end = s.end;
        else
          out.push_back(s);
        previous_match = s.match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous_match && !out.empty())
          out.back().begin = it->begin;
        else
          out.push_back(*it);
        previous_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case SplitBehavior::kContiguous:
      for (const Segment& s : segs) {
        if (s.match == previous_match && !out.empty())
          out.back().end = s.end;
        else
          out.push_back(s);
        previous_match = s.match;
      }
      break;
  }
  segs.swap(out);
}

// Matches as pieces: the gaps between matches become non-matching pieces.
void segments_from_matches(const std::vector<std::pair<size_t, size_t>>& matches, size_t size,
                           std::vector<Segment>& segs) {
  segs.clear();
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev < b) segs.push_back({prev, b, false});
    segs.push_back({b, e, true});
    prev = e;
  }
  if (prev < size) segs.push_back({prev, size, false});
}

void emit(std::string_view text, const std::vector<Segment>& segs, std::vector<std::string_view>& out) {
  for (const Segment& s : segs)
    if (s.end > s.begin) out.push_back(text.substr(s.begin, s.end - s.begin));
}

SplitBehavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail(where, ": Split behavior \"", name,
       "\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

const char* behavior_name(SplitBehavior b) {
  switch (b) {
    case SplitBehavior::kRemoved:
      return "Removed";
    case SplitBehavior::kIsolated:
      return "Isolated";
    case SplitBehavior::kMergedWithPrevious:
      return "MergedWithPrevious";
    case SplitBehavior::kMergedWithNext:
      return "MergedWithNext";
    case SplitBehavior::kContiguous:
      return "Contiguous";
  }
  return "?";
}

template <typename T>
T optional_field(const nlohmann::json& j, const char* key, T fallback, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(where, ".", key, ": has the wrong JSON type (", j.at(key).type_name(), ")");
  }
}

void flatten(const nlohmann::json& j, const std::string& where, const std::string& field,
             std::vector<PreTokenizerStep>& steps) {
  if (!j.is_object() || !j.contains("type") || !j.at("type").is_string())
    fail(where, ": ", field, " is not an object with a string \"type\"");
  const std::string type = j.at("type").get<std::string>();
  const std::string here = where + ": " + field;
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j.at("pretokenizers").is_array())
      fail(here, ".pretokenizers: missing or not an array");
    const auto& list = j.at("pretokenizers");
    for (size_t i = 0; i < list.size(); ++i)
      flatten(list[i], where, field + ".pretokenizers[" + std::to_string(i) + "]", steps);
  } else if (type == "Split") {
    if (!j.contains("pattern") || !j.at("pattern").is_object())
      fail(here, ".pattern: missing or not an object ({\"Regex\": ...} or {\"String\": ...})");
    const auto& pat = j.at("pattern");
    PreTokenizerStep s;
    s.kind = PreTokenizerStep::Kind::kSplit;
    if (pat.contains("Regex") && pat.at("Regex").is_string()) {
      s.pattern = pat.at("Regex").get<std::string>();
      s.pattern_is_regex = true;
      s.regex = std::make_shared<Regex>(s.pattern, here + ".pattern.Regex");
    } else if (pat.contains("String") && pat.at("String").is_string()) {
      s.pattern = pat.at("String").get<std::string>();
      s.pattern_is_regex = false;
    } else {
      fail(here, ".pattern: expected {\"Regex\": string} or {\"String\": string}");
    }
    s.behavior = parse_behavior(optional_field<std::string>(j, "behavior", "", here), here);
    s.invert = optional_field<bool>(j, "invert", false, here);
    steps.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    // Hugging Face's defaults for a ByteLevel without these keys.
    steps.push_back(byte_level_step(optional_field<bool>(j, "add_prefix_space", true, here),
                                    optional_field<bool>(j, "use_regex", true, here)));
    steps.back().trim_offsets = optional_field<bool>(j, "trim_offsets", true, here);
  } else if (type == "Digits") {
    steps.push_back(digits_step(optional_field<bool>(j, "individual_digits", false, here)));
  } else {
    fail(here, ": pre-tokenizer type \"", type,
         "\" is not supported (supported: Sequence, Split, ByteLevel, Digits)");
  }
}

}  // namespace

PreTokenizerStep split_step(const std::string& regex, SplitBehavior behavior, bool invert,
                            const std::string& where) {
  PreTokenizerStep s;
  s.kind = PreTokenizerStep::Kind::kSplit;
  s.pattern = regex;
  s.pattern_is_regex = true;
  s.regex = std::make_shared<Regex>(regex, where);
  s.behavior = behavior;
  s.invert = invert;
  return s;
}

PreTokenizerStep byte_level_step(bool add_prefix_space, bool use_regex) {
  PreTokenizerStep s;
  s.kind = PreTokenizerStep::Kind::kByteLevel;
  s.add_prefix_space = add_prefix_space;
  s.use_regex = use_regex;
  if (use_regex) {
    // One compiled GPT-2 regex serves every ByteLevel step.
    static const std::shared_ptr<const Regex> gpt2 =
        std::make_shared<Regex>(kGpt2Pattern, "the GPT-2 pattern");
    s.regex = gpt2;
  }
  return s;
}

PreTokenizerStep digits_step(bool individual_digits) {
  PreTokenizerStep s;
  s.kind = PreTokenizerStep::Kind::kDigits;
  s.individual_digits = individual_digits;
  return s;
}

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j, const std::string& where) {
  if (j.is_null())
    fail(where, ": pre_tokenizer is null; only byte-level BPE (a ByteLevel pre-tokenizer) is supported");
  std::vector<PreTokenizerStep> steps;
  flatten(j, where, "pre_tokenizer", steps);
  return from_steps(std::move(steps), where);
}

PreTokenizer PreTokenizer::from_steps(std::vector<PreTokenizerStep> steps, const std::string& where) {
  PreTokenizer p;
  size_t byte_levels = 0;
  for (size_t i = 0; i < steps.size(); ++i)
    if (steps[i].kind == PreTokenizerStep::Kind::kByteLevel) {
      p.byte_level_index_ = i;
      ++byte_levels;
    }
  if (byte_levels != 1)
    fail(where, ": pre_tokenizer has ", byte_levels,
         " ByteLevel steps; byte-level BPE needs exactly one (it maps bytes to the vocab's alphabet)");
  p.steps_ = std::move(steps);
  return p;
}

nlohmann::ordered_json PreTokenizer::to_json() const {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const PreTokenizerStep& s : steps_) {
    nlohmann::ordered_json j;
    switch (s.kind) {
      case PreTokenizerStep::Kind::kSplit:
        j["type"] = "Split";
        j["pattern"] = {{s.pattern_is_regex ? "Regex" : "String", s.pattern}};
        j["behavior"] = behavior_name(s.behavior);
        j["invert"] = s.invert;
        break;
      case PreTokenizerStep::Kind::kByteLevel:
        j["type"] = "ByteLevel";
        j["add_prefix_space"] = s.add_prefix_space;
        j["trim_offsets"] = s.trim_offsets;
        j["use_regex"] = s.use_regex;
        break;
      case PreTokenizerStep::Kind::kDigits:
        j["type"] = "Digits";
        j["individual_digits"] = s.individual_digits;
        break;
    }
    list.push_back(std::move(j));
  }
  if (list.size() == 1) return list[0];
  return {{"type", "Sequence"}, {"pretokenizers", list}};
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& words,
                         std::deque<std::string>& storage) const {
  if (text.empty()) return;
  // Pieces are views into `text` or, once a step has changed them (prefix
  // space, byte-level spelling), into strings kept in `storage`.
  std::vector<std::string_view> pieces{text};
  std::vector<std::string_view> next;
  std::vector<std::pair<size_t, size_t>> matches;
  std::vector<Segment> segs;
  for (size_t k = 0; k < steps_.size(); ++k) {
    const PreTokenizerStep& s = steps_[k];
    next.clear();
    for (std::string_view piece : pieces) {
      switch (s.kind) {
        case PreTokenizerStep::Kind::kByteLevel:
          if (s.add_prefix_space && piece[0] != ' ') {
            storage.push_back(" ");
            storage.back() += piece;
            piece = storage.back();
          }
          if (!s.use_regex) {
            next.push_back(piece);
            continue;
          }
          s.regex->find_all(piece, matches);
          segments_from_matches(matches, piece.size(), segs);
          break;
        case PreTokenizerStep::Kind::kSplit:
          if (s.pattern_is_regex) {
            s.regex->find_all(piece, matches);
          } else {
            matches.clear();
            if (!s.pattern.empty())
              for (size_t at = piece.find(s.pattern); at != std::string::npos;
                   at = piece.find(s.pattern, at + s.pattern.size()))
                matches.emplace_back(at, at + s.pattern.size());
          }
          segments_from_matches(matches, piece.size(), segs);
          apply_behavior(segs, s.behavior, s.invert);
          break;
        case PreTokenizerStep::Kind::kDigits: {
          // Every numeric character is a match of its own; Contiguous joins runs.
          matches.clear();
          for (size_t i = 0; i < piece.size();) {
            uint32_t cp = 0;
            const size_t len = std::max<size_t>(1, utf8_sequence(piece, i, &cp));
            if (is_numeric_cp(cp)) matches.emplace_back(i, i + len);
            i += len;
          }
          segments_from_matches(matches, piece.size(), segs);
          apply_behavior(segs, s.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                         false);
          break;
        }
      }
      emit(piece, segs, next);
    }
    pieces.swap(next);
    if (k == byte_level_index_ && words_spelled())
      for (std::string_view& p : pieces) {
        storage.push_back(byte_level_encode(p));
        p = storage.back();
      }
  }
  words.insert(words.end(), pieces.begin(), pieces.end());
}

}  // namespace dha::bpe
