// The tokenizer a GGUF file carries in its metadata (tokenizer.ggml.*), so that
// a .gguf model brings its own tokenizer as a model directory does.
#include "dha/io/gguf.h"
#include "dha/tokenizer_bpe.h"
#include "tokenizer_impl.h"

namespace dha::detail {

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::string& path, int64_t expected_vocab) {
  const io::GgufFile file(path);
  const io::GgufTokenizerData data = io::read_gguf_tokenizer(file);
  if (data.model != "gpt2")
    fail(path, ": tokenizer.ggml.model \"", data.model,
         "\" is not supported from GGUF metadata (only \"gpt2\", byte-level BPE); pass --tokenizer with the "
         "model's tokenizer.model or tokenizer.json");
  BpeVocabSpec spec;
  spec.tokens = data.tokens;
  spec.merges = data.merges;
  spec.token_types = data.token_types;
  spec.pre = data.pre.empty() ? "default" : data.pre;
  spec.bos_id = data.bos_id ? static_cast<int32_t>(*data.bos_id) : -1;
  spec.eos_id = data.eos_id ? static_cast<int32_t>(*data.eos_id) : -1;
  spec.unk_id = data.unknown_id ? static_cast<int32_t>(*data.unknown_id) : -1;
  spec.add_bos = data.add_bos.value_or(false);
  spec.add_eos = data.add_eos.value_or(false);
  auto tokenizer = ByteLevelBpeTokenizer::from_vocab(spec, path);
  if (expected_vocab > 0 && tokenizer->vocab_size() > expected_vocab)
    fail(path, ": tokenizer has ", tokenizer->vocab_size(), " tokens but the model's vocab is ", expected_vocab);
  return tokenizer;
}

}  // namespace dha::detail
