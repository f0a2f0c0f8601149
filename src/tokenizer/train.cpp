// Training a sentencepiece BPE vocabulary (libsentencepiece_train).
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>

#include "dha/corpus.h"
#include "dha/error.h"
#include "dha/io/atomic_file.h"

namespace dha {

void train_sentencepiece(const std::vector<std::string>& files, int64_t vocab_size, double heldout,
                         const std::string& model_path, uint64_t seed, const DocumentInputOptions& input_options) {
  if (vocab_size < 260) fail("--train-vocab ", vocab_size, " is too small (byte fallback alone needs 259 pieces)");
  // One sentence per line: the training documents only, so held-out text stays unseen.
  std::string text;
  for (const auto& file : files) {
    const size_t end = heldout > 0 ? heldout_start(count_documents(file, input_options), heldout) : SIZE_MAX;
    const auto reader = open_documents(file, input_options);
    std::string doc;
    for (size_t d = 0; d < end && reader->next(doc); ++d) {
      for (char& c : doc)
        if (c == '\n') c = ' ';
      text += doc + "\n";
    }
  }
  if (text.empty()) fail("--train-vocab: no training text");
  const std::string suffix = ".model";
  if (model_path.size() <= suffix.size() || model_path.compare(model_path.size() - suffix.size(), suffix.size(), suffix) != 0)
    fail(model_path, ": a sentencepiece model path must end in .model");
  const std::string prefix = model_path.substr(0, model_path.size() - suffix.size());
  const std::string input = prefix + ".train-text";
  io::write_file_atomic(input, text);
  sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned int>(seed));
  const std::string args = "--input=" + input + " --model_prefix=" + prefix + " --vocab_size=" +
                           std::to_string(vocab_size) +
                           " --model_type=bpe --byte_fallback=true --character_coverage=1.0"
                           " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --split_digits=true"
                           " --max_sentence_length=16384 --num_threads=2 --minloglevel=2"
                           // Llama-2's rules: no NFKC, spaces kept as written, so that
                           // llama.cpp's SPM tokenizer (which normalises nothing) gives
                           // the same ids as dha for any text.
                           " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                           " --input_sentence_size=2000000 --shuffle_input_sentence=true";
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  std::remove(input.c_str());
  std::remove((prefix + ".vocab").c_str());
  if (!status.ok()) fail("sentencepiece training failed: ", status.ToString());
}

}  // namespace dha
