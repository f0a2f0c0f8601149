// Tokenizers: sentencepiece .model files and llama2.c tokenizer.bin files (with
// the encoding of llama2.c's reference run.c: dummy-prefix space, merges by
// score, byte fallback); byte-level BPE tokenizer.json in tokenizer_bpe.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dha {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`, with BOS / EOS prepended / appended on request. For
  // sentencepiece and llama2.c a non-empty text gets the dummy-prefix space;
  // byte-level BPE (tokenizer_bpe.h) adds none unless its pre-tokenizer says so.
  virtual std::vector<int32_t> encode(const std::string& text, bool bos, bool eos) const = 0;
  // The text that `token` contributes after `prev` when streaming (a leading
  // space is dropped right after BOS; byte tokens become their byte). An id
  // outside [0, vocab_size()) is a dha::Error.
  virtual std::string decode_piece(int32_t prev, int32_t token) const = 0;
  // Whole-sequence decode (BOS/EOS are dropped).
  std::string decode(const std::vector<int32_t>& tokens) const;

  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  // The model's own convention: whether a document starts with BOS
  // (sentencepiece and llama2.c: always; byte-level BPE: its add_bos_token).
  virtual bool add_bos_by_default() const { return true; }
  // The token the model was pre-trained with between documents when it does not
  // start them with BOS (document_protocol); -1 when it declares none.
  // sentencepiece and llama2.c: none (their models start documents with BOS).
  virtual int32_t document_separator_id() const { return -1; }
  // Writes this tokenizer into the directory `dir` under the names
  // find_tokenizer_in_dir looks for: the file it was read from, copied under
  // its canonical name (tokenizer_file_name), with what it reads beside it.
  virtual void write_files(const std::string& dir) const;
  // The file it was read from (for one built from a model file's metadata: that file).
  const std::string& path() const { return path_; }

 protected:
  std::string path_;
};

// How a document begins as the model reads it: in dha-eval, in the conversion's
// calibration and held-out text (encode_document) and in dha-tokenize's shards.
enum class FirstToken {
  kBos,        // BOS + encode(text): the model starts documents with BOS
  kSeparator,  // separator + encode(text): no BOS, the pre-training separator
               // (e.g. GPT-2's <|endoftext|>) stands where the previous document ended
  kGiven,      // encode(text): neither; the document's own first token is given
};
struct DocumentProtocol {
  FirstToken first_token = FirstToken::kBos;
  int32_t token_id = -1;  // the BOS or separator id; -1 for kGiven
};
// BOS when the tokenizer adds it by default, else its document separator when
// it declares one, else kGiven.
DocumentProtocol document_protocol(const Tokenizer& tokenizer);
// "bos", "separator", "given" (dha-eval's JSON, data.json).
const char* first_token_name(FirstToken first_token);

// Loads a tokenizer by content: a sentencepiece protobuf (.model), a llama2.c
// tokenizer.bin, a Hugging Face tokenizer.json (byte-level BPE; a .json name
// or JSON content), or the byte-level BPE vocabulary in a .gguf model's
// metadata. `expected_vocab` > 0: a llama2.c file is read for exactly that
// many tokens (the format does not store the count), a sentencepiece model
// must have exactly that many pieces and a byte-level BPE one at most that
// many (embeddings are often padded); a mismatch is a dha::Error.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int64_t expected_vocab = 0);

// The tokenizer that belongs to a model path: inside a model directory
// (find_tokenizer_in_dir); a .gguf file itself (its metadata holds one); or
// beside a checkpoint file (the same names, then tok<vocab>.bin). Empty if none is found.
std::string find_tokenizer_for_model(const std::string& model_path, int64_t vocab_size);
// The tokenizer file inside a directory: tokenizer.model, then tokenizer.bin,
// then tokenizer.json. Empty if none.
std::string find_tokenizer_in_dir(const std::string& dir);
// The name a tokenizer file takes inside a model directory, so that
// find_tokenizer_in_dir finds it: tokenizer.model for a sentencepiece .model
// file, tokenizer.json for a Hugging Face tokenizer.json, tokenizer.bin otherwise.
std::string tokenizer_file_name(const std::string& tokenizer_path);

}  // namespace dha
