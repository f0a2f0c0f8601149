// Corpora to token shards (dha-tokenize), and training a sentencepiece
// vocabulary for models pre-trained from scratch. The inputs are any of the
// corpus formats of dha/documents.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dha/documents.h"
#include "dha/tokenizer.h"

namespace dha {

struct CorpusOptions {
  double heldout = 0.0;                 // fraction of each file's documents (its last ones) held out
  int64_t shard_tokens = 50'000'000;    // tokens per shard file at most
  int threads = 0;                      // encoding threads; 0: every core. The shards do not depend on it
  int64_t batch_bytes = 16 << 20;       // text encoded at a time (bounds the memory with the shard)
  DocumentInputOptions input;
};

struct CorpusFileSummary {
  std::string path, format;
  int64_t docs = 0, tokens = 0, skipped = 0, empty = 0, bytes = 0;
};

struct CorpusSummary {
  int64_t train_tokens = 0, heldout_tokens = 0;
  int64_t train_docs = 0, heldout_docs = 0;
  int64_t train_shards = 0, heldout_shards = 0;
  int64_t skipped = 0, empty = 0;  // bad records skipped (--skip-bad), records with empty text
  int threads = 1;
  double seconds = 0.0;
  std::vector<CorpusFileSummary> files;
  DocumentProtocol protocol;  // how every document begins (document_protocol of the tokenizer)
};

// Index of a file's first held-out document: the last `heldout` fraction (at
// least one document when heldout > 0).
size_t heldout_start(size_t n_docs, double heldout);

// Each file's documents (in its format, streamed) are encoded as dha-eval
// encodes them (encode_document: BOS + tokens, separator + tokens, or tokens,
// by the tokenizer's document_protocol), `threads` at a time, and written in
// input order with their index to out_dir/train-NNNNN.tok and
// out_dir/heldout-NNNNN.tok (the last `heldout` fraction of each file; a file
// is then read twice, first to count its documents). The shards are the same
// bytes for every thread count. For a separator-led model the training stream
// is the pre-training one: every document follows the separator the model was
// pre-trained with.
CorpusSummary tokenize_corpus(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                              const std::string& out_dir, const CorpusOptions& options,
                              bool show_progress);

// Trains a BPE sentencepiece model with byte fallback (<unk>=0, <s>=1, </s>=2)
// on the training part of the files (held-out documents excluded) and writes
// model_path. Deterministic for a seed. Normalisation as Llama-2's tokenizer:
// identity, whitespace kept (llama.cpp then tokenizes text as dha does).
void train_sentencepiece(const std::vector<std::string>& files, int64_t vocab_size, double heldout,
                         const std::string& model_path, uint64_t seed,
                         const DocumentInputOptions& input = {});

}  // namespace dha
