// Private to the tokenizer sources: the two format loaders that load_tokenizer
// dispatches to, and the error type that lets it fall back from one to the other.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "dha/error.h"
#include "dha/tokenizer.h"

namespace dha::detail {

// The bytes are not this format at all (as opposed to "this format, but the
// wrong vocab size"): load_tokenizer may then try the other format.
class TokenizerFormatError : public Error {
 public:
  using Error::Error;
};

// Both take the file's full contents (already read by load_tokenizer) so that
// a missing/unreadable file is reported once, in one place. They throw
// TokenizerFormatError when the bytes do not parse and plain dha::Error when
// they parse but disagree with `expected_vocab` (> 0).
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, const std::string& bytes,
                                                  int64_t expected_vocab);
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path,
                                                        const std::string& bytes,
                                                        int64_t expected_vocab);

// The byte-level BPE tokenizer in a GGUF file's metadata; `path` is the .gguf model.
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::string& path, int64_t expected_vocab);

// True when `piece` is exactly "<0xXX>" (XX hex, either case), the spelling of
// byte-fallback tokens in both formats; stores that byte.
bool parse_byte_piece(const std::string& piece, unsigned char* byte);

}  // namespace dha::detail
