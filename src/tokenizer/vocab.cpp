// A tokenizer file's vocabulary as data: sentencepiece models through
// libsentencepiece (plus add_dummy_prefix read from the serialized proto),
// llama2.c tokenizer.bin files parsed directly.
#include "dha/tokenizer_vocab.h"

#include <sentencepiece_processor.h>

#include <cstring>
#include <filesystem>
#include <optional>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "dha/tokenizer.h"
#include "tokenizer_impl.h"

namespace dha {
namespace {

constexpr const char* kSpaceMark = "\xE2\x96\x81";  // U+2581, sentencepiece's space

// ---- protobuf wire format, just enough to find one bool ----

bool read_varint(const std::string& b, size_t& at, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && at < b.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(b[at++]);
    v |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

// Calls `field(number, wire_type, varint_value, payload)` for each field of
// the message `b`; false when the bytes are not a well-formed message.
template <typename Field>
bool for_each_field(const std::string& b, Field field) {
  size_t at = 0;
  while (at < b.size()) {
    uint64_t tag = 0, value = 0;
    if (!read_varint(b, at, tag)) return false;
    const uint64_t wire = tag & 7;
    std::string payload;
    if (wire == 0) {
      if (!read_varint(b, at, value)) return false;
    } else if (wire == 1 || wire == 5) {
      const size_t n = wire == 1 ? 8 : 4;
      if (b.size() - at < n) return false;
      at += n;
    } else if (wire == 2) {
      if (!read_varint(b, at, value) || value > b.size() - at) return false;
      payload = b.substr(at, static_cast<size_t>(value));
      at += static_cast<size_t>(value);
    } else {
      return false;
    }
    field(tag >> 3, wire, value, payload);
  }
  return true;
}

// ModelProto field 3 is the NormalizerSpec, whose field 3 is add_dummy_prefix
// (default true): sentencepiece_model.proto, which Debian's package does not
// ship as a header.
bool sentencepiece_add_dummy_prefix(const std::string& model_bytes) {
  bool add = true;
  for_each_field(model_bytes, [&](uint64_t number, uint64_t wire, uint64_t, const std::string& spec) {
    if (number != 3 || wire != 2) return;
    for_each_field(spec, [&](uint64_t n, uint64_t w, uint64_t value, const std::string&) {
      if (n == 3 && w == 0) add = value != 0;
    });
  });
  return add;
}

std::optional<TokenizerVocab> sentencepiece_vocab(const std::string& bytes) {
  if (bytes.empty() || static_cast<unsigned char>(bytes[0]) != 0x0A) return std::nullopt;
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.LoadFromSerializedProto(bytes).ok()) return std::nullopt;
  TokenizerVocab v;
  v.kind = TokenizerVocab::Kind::kSentencepiece;
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    v.pieces.push_back(sp.IdToPiece(id));
    v.scores.push_back(sp.GetScore(id));
    // The order of llama.cpp's convert_hf_to_gguf.py (_create_vocab_sentencepiece).
    PieceType type = PieceType::kNormal;
    if (sp.IsUnknown(id))
      type = PieceType::kUnknown;
    else if (sp.IsControl(id))
      type = PieceType::kControl;
    else if (sp.IsUnused(id))
      type = PieceType::kUnused;
    else if (sp.IsByte(id))
      type = PieceType::kByte;
    v.types.push_back(type);
  }
  v.unk_id = sp.unk_id();
  v.bos_id = sp.bos_id();
  v.eos_id = sp.eos_id();
  v.pad_id = sp.pad_id();
  v.add_dummy_prefix = sentencepiece_add_dummy_prefix(bytes);
  return v;
}

// The layout load_llama2c_tokenizer checks: int32 max_token_length, then per
// token a float score, an int32 length and the bytes, to the end of the file.
std::optional<TokenizerVocab> llama2c_vocab(const std::string& bytes) {
  const auto read = [&](size_t at, auto& out) { std::memcpy(&out, bytes.data() + at, sizeof out); };
  if (bytes.size() < 4) return std::nullopt;
  int32_t max_len = 0;
  read(0, max_len);
  if (max_len <= 0 || static_cast<size_t>(max_len) > bytes.size()) return std::nullopt;
  TokenizerVocab v;
  v.kind = TokenizerVocab::Kind::kLlama2c;
  size_t at = 4;
  while (at < bytes.size()) {
    if (bytes.size() - at < 8) return std::nullopt;
    float score = 0;
    int32_t len = 0;
    read(at, score);
    read(at + 4, len);
    at += 8;
    if (len < 0 || len > max_len || static_cast<size_t>(len) > bytes.size() - at) return std::nullopt;
    std::string piece = bytes.substr(at, static_cast<size_t>(len));
    at += static_cast<size_t>(len);
    // Respelled for sentencepiece: a space is U+2581.
    std::string spelled;
    for (const char c : piece) spelled += c == ' ' ? std::string(kSpaceMark) : std::string(1, c);
    const int32_t id = static_cast<int32_t>(v.pieces.size());
    unsigned char byte = 0;
    PieceType type = PieceType::kNormal;
    if (id == 0)
      type = PieceType::kUnknown;
    else if (id == 1 || id == 2)
      type = PieceType::kControl;
    else if (detail::parse_byte_piece(piece, &byte))
      type = PieceType::kByte;
    v.pieces.push_back(std::move(spelled));
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  if (v.pieces.empty()) return std::nullopt;
  // run.c's fixed ids; no padding token.
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  return v;
}

}  // namespace

TokenizerVocab read_tokenizer_vocab(const std::string& path, int64_t expected_vocab) {
  // load_tokenizer gives the errors (missing file, neither format, vocab size).
  load_tokenizer(path, expected_vocab);
  const std::filesystem::path extension = std::filesystem::path(path).extension();
  if (extension == ".json")
    fail(path, ": a Hugging Face tokenizer.json (byte-level BPE) is not written as a GGUF vocabulary yet "
               "(sentencepiece and llama2.c ones are); export hf or dha for transformers");
  const std::string bytes = io::read_file(path);
  // The order load_tokenizer tries the formats in, so the same one is found.
  const bool llama2c_first = extension == ".bin";
  std::optional<TokenizerVocab> v = llama2c_first ? llama2c_vocab(bytes) : sentencepiece_vocab(bytes);
  if (!v) v = llama2c_first ? sentencepiece_vocab(bytes) : llama2c_vocab(bytes);
  if (!v) fail(path, ": the tokenizer loads but its vocabulary could not be read back");
  return *v;
}

}  // namespace dha
