// Byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2, SmolLM, ...): read from a
// Hugging Face tokenizer.json or built from a GGUF file's vocab/merges vectors,
// giving the ids of Hugging Face `tokenizers`, and written back as tokenizer.json.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dha/tokenizer.h"

namespace dha {

// The tokenizer.ggml.* metadata of a GGUF file whose tokenizer.ggml.model is "gpt2".
struct BpeVocabSpec {
  std::vector<std::string> tokens;  // tokenizer.ggml.tokens: id -> token, byte-level spelled
  std::vector<std::string> merges;  // tokenizer.ggml.merges: "left right", rank order
  // tokenizer.ggml.token_type (empty: every token is normal). Control (3) tokens
  // become special added tokens and user-defined (4) ones plain added tokens:
  // both are matched in the raw text and never split, as Hugging Face's GGUF
  // import does.
  std::vector<int32_t> token_types;
  // tokenizer.ggml.pre: "gpt2", "smollm", "llama-bpe", "qwen2", "default" and the
  // names llama.cpp treats as the same (the table kPreNames in src/tokenizer/bpe.cpp).
  std::string pre = "default";
  int32_t bos_id = -1;  // -1: none
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  bool add_bos = false;  // tokenizer.ggml.add_bos_token
  bool add_eos = false;  // tokenizer.ggml.add_eos_token
};

// Encoding follows Hugging Face `tokenizers` step by step: added tokens are cut
// out of the raw text first (leftmost-longest, never split), then the normalizer
// (none, or NFC/NFD/NFKC/NFKD), the pre-tokenizer (Sequence, Split, ByteLevel,
// Digits), and BPE merges by rank. encode(text, bos, eos) gives
// Tokenizer.encode(text, add_special_tokens=False).ids with BOS/EOS added on
// request; no space is prepended unless the ByteLevel step says add_prefix_space.
//
// Text that is not well-formed UTF-8 (which Hugging Face cannot be given): each
// byte that is not part of a well-formed sequence becomes the token of that byte
// by itself, and the text on either side is tokenized as if the byte were an
// added token there. decode() then gives back the exact bytes.
class ByteLevelBpeTokenizer : public Tokenizer {
 public:
  // A tokenizer.json: `path` names it in errors and locates tokenizer_config.json
  // beside it (bos_token, eos_token, add_bos_token, add_eos_token); `json` is its text.
  static std::unique_ptr<ByteLevelBpeTokenizer> from_json(const std::string& path, const std::string& json);
  static std::unique_ptr<ByteLevelBpeTokenizer> load(const std::string& path);
  // From GGUF metadata; `source` names the file in errors.
  static std::unique_ptr<ByteLevelBpeTokenizer> from_vocab(const BpeVocabSpec& spec,
                                                           const std::string& source);

  ~ByteLevelBpeTokenizer() override;

  std::vector<int32_t> encode(const std::string& text, bool bos, bool eos) const override;
  // The bytes of `token` (byte-level decoded; added tokens give their content).
  // `prev` plays no part: byte-level BPE has no dummy-prefix space to drop.
  std::string decode_piece(int32_t prev, int32_t token) const override;
  int64_t vocab_size() const override;
  int32_t bos_id() const override;  // -1 when there is none
  int32_t eos_id() const override;
  // The model's own convention: add_bos_token of tokenizer_config.json, else
  // whether the post-processor template starts with a special token; for GGUF,
  // tokenizer.ggml.add_bos_token.
  bool add_bos_by_default() const override;
  bool add_eos_by_default() const;
  // The special token <|endoftext|> when there is one, else EOS (-1: neither).
  int32_t document_separator_id() const override;

  // An added token's content or a vocab token's byte-level spelling -> id; -1 if none.
  int32_t token_to_id(const std::string& token) const;
  // The token as tokenizer.json spells it (an id outside the vocab is a dha::Error).
  std::string id_to_token(int32_t id) const;

  // Writes `dir`/tokenizer.json and `dir`/tokenizer_config.json (each atomically;
  // `dir` is created if missing) so that Hugging Face `tokenizers` and
  // transformers' AutoTokenizer load them back to the same ids.
  void write_tokenizer_json(const std::string& dir) const;
  // A tokenizer read from a file: that tokenizer.json, with tokenizer_config.json
  // when one sits beside it; one built from GGUF metadata: write_tokenizer_json.
  void write_files(const std::string& dir) const override;

 private:
  ByteLevelBpeTokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dha
