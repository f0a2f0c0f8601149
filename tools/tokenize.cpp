// dha-tokenize: corpora (text, JSONL, Parquet; .gz/.zst) -> token shards (each
// document as dha-eval reads it: BOS-led, led by the model's pre-training
// separator, or as is; see encode_document), with an optional held-out split
// and an optional freshly trained sentencepiece vocab.
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "dha/corpus.h"
#include "dha/error.h"
#include "dha/io/atomic_file.h"

int main(int argc, char** argv) {
  CLI::App app{"Tokenize corpora into dha token shards (train-*.tok, heldout-*.tok). Inputs: " +
                    dha::document_formats_help() +
                    ". A directory gives its files of those formats, recursively, in path order; a quoted pattern "
                    "(data/*.jsonl.zst) its matches in path order.",
                "dha-tokenize"};
  std::string tokenizer_path, out_dir;
  std::vector<std::string> inputs;
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
  app.add_option("--threads", options.threads,
                 "encoding threads (0: every core); the shards are the same bytes for every count")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--text-field", options.input.text_field,
                 "JSONL: the field of each record that holds its document; Parquet: the column")
      ->capture_default_str();
  app.add_flag("--skip-bad", options.input.skip_bad,
               "count and skip records without a string text field (or not JSON) instead of stopping at the first");
  app.add_flag("--force", force, "replace an existing output directory");
  app.add_option("inputs", inputs, "corpus files, directories or quoted patterns")->required();
  return dha::cli::run(app, argc, argv, [&] {
    if (tokenizer_path.empty() == (train_vocab == 0))
      dha::fail("give exactly one of --tokenizer PATH and --train-vocab N");
    const std::vector<std::string> files = dha::expand_document_inputs(inputs);
    if (!tokenizer_path.empty() && std::filesystem::is_directory(tokenizer_path)) {
      const std::string found = dha::find_tokenizer_in_dir(tokenizer_path);
      if (found.empty())
        dha::fail(tokenizer_path, ": no tokenizer.model, tokenizer.bin or tokenizer.json in this directory");
      tokenizer_path = found;
    }
    dha::io::StagedDirectory staged(out_dir, force);
    // The tokenizer goes into the output, so that dha-train finds it there.
    if (train_vocab > 0)
      dha::train_sentencepiece(files, train_vocab, options.heldout, staged.file("tokenizer.model"), seed,
                               options.input);
    else
      dha::load_tokenizer(tokenizer_path)->write_files(staged.path());
    const std::string tokenizer_file = dha::find_tokenizer_in_dir(staged.path());
    const std::string tokenizer_name = std::filesystem::path(tokenizer_file).filename().string();
    const auto tokenizer = dha::load_tokenizer(tokenizer_file);
    const dha::CorpusSummary s = dha::tokenize_corpus(*tokenizer, files, staged.path(), options, true);
    // What was read, file by file, in order (no thread count or time: the
    // directory is the same bytes for every --threads).
    nlohmann::json inputs_read = nlohmann::json::array();
    for (const auto& f : s.files)
      inputs_read.push_back({{"path", f.path}, {"format", f.format}, {"bytes", f.bytes}, {"docs", f.docs},
                             {"tokens", f.tokens}, {"skipped", f.skipped}, {"empty", f.empty}});
    const nlohmann::json meta = {{"tokenizer", tokenizer_name},
                                 {"vocab_size", tokenizer->vocab_size()},
                                 {"bos_id", tokenizer->bos_id()},
                                 {"first_token", dha::first_token_name(s.protocol.first_token)},
                                 {"first_token_id", s.protocol.token_id >= 0 ? nlohmann::json(s.protocol.token_id)
                                                                             : nlohmann::json(nullptr)},
                                 {"files", files},
                                 {"inputs", inputs_read},
                                 {"text_field", options.input.text_field},
                                 {"skipped_records", s.skipped},
                                 {"empty_records", s.empty},
                                 {"heldout_fraction", options.heldout},
                                 {"train", {{"tokens", s.train_tokens}, {"docs", s.train_docs}, {"shards", s.train_shards}}},
                                 {"heldout", {{"tokens", s.heldout_tokens}, {"docs", s.heldout_docs}, {"shards", s.heldout_shards}}}};
    dha::io::write_file_atomic(staged.file("data.json"), meta.dump(2) + "\n");
    staged.commit();
    std::printf("%s: %lld training tokens in %lld documents, %lld held-out tokens in %lld documents, vocab %lld\n",
                out_dir.c_str(), (long long)s.train_tokens, (long long)s.train_docs, (long long)s.heldout_tokens,
                (long long)s.heldout_docs, (long long)tokenizer->vocab_size());
    const int64_t tokens = s.train_tokens + s.heldout_tokens;
    std::printf("%zu files in %.1f s on %d threads: %.0f tokens/s\n", files.size(), s.seconds, s.threads,
                s.seconds > 0 ? tokens / s.seconds : 0.0);
    if (s.skipped > 0 || s.empty > 0)
      std::printf("skipped %lld bad records (--skip-bad) and %lld records with empty text; data.json lists them "
                  "by file\n",
                  (long long)s.skipped, (long long)s.empty);
    return 0;
  });
}
