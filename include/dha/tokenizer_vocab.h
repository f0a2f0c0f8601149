// A tokenizer file's vocabulary as data (pieces, scores, piece types, special
// ids), for writers that embed the tokenizer in another format (GGUF's
// tokenizer.ggml.* keys, which llama.cpp's tokenizer runs on).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dha {

// Piece types numbered as llama.cpp's llama_token_type (and gguf-py's
// TokenType): the values of GGUF's tokenizer.ggml.token_type.
enum class PieceType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct TokenizerVocab {
  enum class Kind { kSentencepiece, kLlama2c };
  Kind kind = Kind::kSentencepiece;
  // Sentencepiece spelling: U+2581 for a space, "<0xXX>" for byte pieces
  // (llama2.c files store spaces as ' '; they are respelled).
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<PieceType> types;
  int32_t unk_id = -1, bos_id = -1, eos_id = -1, pad_id = -1;  // -1: none
  // Whether encoding prepends a space to the text (sentencepiece's
  // normalizer_spec.add_dummy_prefix; always so in llama2.c's run.c).
  bool add_dummy_prefix = true;
};

// Reads the tokenizer file `path` as load_tokenizer does (same format
// detection, same errors, `expected_vocab` > 0 checked the same way) and
// returns its vocabulary. Types follow llama.cpp's converters: sentencepiece's
// unknown / control / unused / byte pieces; for llama2.c, id 0 is unknown,
// 1 and 2 (BOS, EOS) control, "<0xXX>" pieces bytes.
TokenizerVocab read_tokenizer_vocab(const std::string& path, int64_t expected_vocab = 0);

}  // namespace dha
