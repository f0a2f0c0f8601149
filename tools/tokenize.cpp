// dha-tokenize: text files -> token shards (each document as dha-eval reads it:
// BOS-led, led by the model's pre-training separator, or as is; see
// encode_document), with an optional held-out split and an optional freshly
// trained sentencepiece vocab.
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/corpus.h"
#include "dha/error.h"
#include "dha/io/atomic_file.h"

int main(int argc, char** argv) {
  CLI::App app{"Tokenize text files into dha token shards (train-*.tok, heldout-*.tok)", "dha-tokenize"};
  std::string tokenizer_path, out_dir;
  std::vector<std::string> files;
  dha::CorpusOptions options;
  int64_t train_vocab = 0;
  uint64_t seed = 1234;
  bool force = false;
  app.add_option("--tokenizer", tokenizer_path,
                 "sentencepiece .model, llama2.c tokenizer.bin, tokenizer.json, a .gguf model (its vocabulary), "
                 "or a model directory (the tokenizer in it)");
  app.add_option("--train-vocab", train_vocab,
                 "instead: train a sentencepiece BPE vocab of this size on the (training part of the) files");
  app.add_option("--out", out_dir, "output directory (must not exist unless --force)")->required();
  app.add_option("--heldout", options.heldout, "fraction of each file's documents (the last ones) held out")
      ->capture_default_str();
  app.add_option("--shard-tokens", options.shard_tokens, "tokens per shard at most")->capture_default_str();
  app.add_option("--seed", seed, "seed for vocab training")->capture_default_str();
  app.add_flag("--force", force, "replace an existing output directory");
  app.add_option("files", files, "UTF-8 text files (documents separated by blank lines)")->required();
  return dha::cli::run(app, argc, argv, [&] {
    if (tokenizer_path.empty() == (train_vocab == 0))
      dha::fail("give exactly one of --tokenizer PATH and --train-vocab N");
    for (const auto& file : files)
      if (!std::filesystem::is_regular_file(file)) dha::fail(file, ": no such file");
    if (!tokenizer_path.empty() && std::filesystem::is_directory(tokenizer_path)) {
      const std::string found = dha::find_tokenizer_in_dir(tokenizer_path);
      if (found.empty())
        dha::fail(tokenizer_path, ": no tokenizer.model, tokenizer.bin or tokenizer.json in this directory");
      tokenizer_path = found;
    }
    dha::io::StagedDirectory staged(out_dir, force);
    // The tokenizer goes into the output, so that dha-train finds it there.
    if (train_vocab > 0)
      dha::train_sentencepiece(files, train_vocab, options.heldout, staged.file("tokenizer.model"), seed);
    else
      dha::load_tokenizer(tokenizer_path)->write_files(staged.path());
    const std::string tokenizer_file = dha::find_tokenizer_in_dir(staged.path());
    const std::string tokenizer_name = std::filesystem::path(tokenizer_file).filename().string();
    const auto tokenizer = dha::load_tokenizer(tokenizer_file);
    const dha::CorpusSummary s = dha::tokenize_corpus(*tokenizer, files, staged.path(), options, true);
    const nlohmann::json meta = {{"tokenizer", tokenizer_name},
                                 {"vocab_size", tokenizer->vocab_size()},
                                 {"bos_id", tokenizer->bos_id()},
                                 {"first_token", dha::first_token_name(s.protocol.first_token)},
                                 {"first_token_id", s.protocol.token_id >= 0 ? nlohmann::json(s.protocol.token_id)
                                                                             : nlohmann::json(nullptr)},
                                 {"files", files},
                                 {"heldout_fraction", options.heldout},
                                 {"train", {{"tokens", s.train_tokens}, {"docs", s.train_docs}, {"shards", s.train_shards}}},
                                 {"heldout", {{"tokens", s.heldout_tokens}, {"docs", s.heldout_docs}, {"shards", s.heldout_shards}}}};
    dha::io::write_file_atomic(staged.file("data.json"), meta.dump(2) + "\n");
    staged.commit();
    std::printf("%s: %lld training tokens in %lld documents, %lld held-out tokens in %lld documents, vocab %lld\n",
                out_dir.c_str(), (long long)s.train_tokens, (long long)s.train_docs, (long long)s.heldout_tokens,
                (long long)s.heldout_docs, (long long)tokenizer->vocab_size());
    return 0;
  });
}
