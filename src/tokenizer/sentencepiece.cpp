// Sentencepiece .model files through libsentencepiece: encoding is the library's
// own; streaming decode maps "▁" to a space and byte pieces to their byte.
#include <sentencepiece_processor.h>

#include <filesystem>
#include <string_view>
#include <vector>

#include "dha/io/atomic_file.h"
#include "tokenizer_impl.h"

namespace dha::detail {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, sentencepiece's space

class SentencepieceTokenizer : public Tokenizer {
 public:
  SentencepieceTokenizer(std::string path, std::unique_ptr<sentencepiece::SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {
    path_ = std::move(path);
  }

  std::vector<int32_t> encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int> ids;
    const auto status = sp_->Encode(text, &ids);
    if (!status.ok()) fail(path_, ": sentencepiece could not encode the text: ", status.message());
    std::vector<int32_t> tokens;
    tokens.reserve(ids.size() + 2);
    if (bos) tokens.push_back(required_id(bos_id(), "BOS"));
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    if (eos) tokens.push_back(required_id(eos_id(), "EOS"));
    return tokens;
  }

  std::string decode_piece(int32_t prev, int32_t token) const override {
    if (token < 0 || token >= vocab_size())
      fail(path_, ": token id ", token, " is outside the vocab [0, ", vocab_size(), ")");
    // Control pieces (<s>, </s>, ...) decode to nothing, as in sentencepiece's Decode.
    if (sp_->IsControl(token)) return {};
    const std::string& raw = sp_->IdToPiece(token);
    if (sp_->IsByte(token)) {
      unsigned char byte;
      if (parse_byte_piece(raw, &byte)) return std::string(1, static_cast<char>(byte));
      fail(path_, ": byte piece ", token, " is spelled \"", raw, "\", expected <0xXX>");
    }
    std::string piece;
    piece.reserve(raw.size());
    for (size_t i = 0; i < raw.size();) {
      if (raw.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
        piece.push_back(' ');
        i += kSpaceMark.size();
      } else {
        piece.push_back(raw[i++]);
      }
    }
    // The dummy-prefix space of the first word is not part of the text.
    if (prev == bos_id() && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    return piece;
  }

  // tokenizer.model, and beside it the tokenizer_config.json that makes
  // transformers add BOS as sentencepiece models are read here (without one,
  // transformers 5 loads a bare tokenizer.model with add_bos_token false, and
  // lm-eval would score without BOS). No tokenizer_class: LlamaTokenizer's
  // legacy rules tokenize spaces and newlines otherwise than sentencepiece.
  void write_files(const std::string& dir) const override {
    Tokenizer::write_files(dir);
    const std::string config = (std::filesystem::path(dir) / "tokenizer_config.json").string();
    if (!std::filesystem::exists(config))
      io::write_file_atomic(config, "{\n  \"add_bos_token\": " + std::string(bos_id() >= 0 ? "true" : "false") +
                                        ",\n  \"add_eos_token\": false\n}\n");
  }

  int64_t vocab_size() const override { return sp_->GetPieceSize(); }
  int32_t bos_id() const override { return sp_->bos_id(); }
  int32_t eos_id() const override { return sp_->eos_id(); }

 private:
  int32_t required_id(int32_t id, const char* what) const {
    if (id < 0) fail(path_, ": the sentencepiece model has no ", what, " token but one was requested");
    return id;
  }

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path,
                                                        const std::string& bytes,
                                                        int64_t expected_vocab) {
  // A serialized ModelProto starts with its repeated field 1 (pieces): tag 0x0A.
  // Checking that first keeps the library from parsing arbitrary binaries.
  if (bytes.empty() || static_cast<unsigned char>(bytes[0]) != 0x0A)
    throw TokenizerFormatError(path + ": not a sentencepiece model (a ModelProto starts with byte 0x0A)");
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(bytes);
  if (!status.ok())
    throw TokenizerFormatError(path + ": not a sentencepiece model (" + status.message() + ")");
  if (expected_vocab > 0 && sp->GetPieceSize() != expected_vocab)
    fail(path, ": tokenizer has ", sp->GetPieceSize(), " tokens but the model's vocab is ",
         expected_vocab);
  return std::make_unique<SentencepieceTokenizer>(path, std::move(sp));
}

}  // namespace dha::detail
