// Held-out evaluation (mean NLL per token) and text generation with the KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "dha/model.h"
#include "dha/tokenizer.h"

namespace dha {

// The documents of a text, each exactly as written. Documents are separated by
// blank lines (empty, or holding only spaces, tabs, \r, \f, \v); the separator
// is the line break ("\n" or "\r\n") that ends a document's last line and the
// run of blank lines after it. A document keeps everything else: the leading
// whitespace of its first line, the trailing whitespace of its last line and
// its inner line breaks, so that it is scored as llama2.c's run.c would encode
// the chunk. Blank-only chunks are no document.
std::vector<std::string> split_documents(const std::string& text);
// Whether a line (without its "\n") is blank by that rule: only spaces, tabs,
// \r, \f and \v, or nothing. The streaming text reader of dha-tokenize and
// JSONL's blank lines use it too.
bool is_blank_line(std::string_view line);

struct EvalResult {
  double mean_nll = 0.0;  // nats per predicted token
  double ppl = 0.0;
  int64_t tokens = 0;     // predicted tokens
  int64_t docs = 0;
  int64_t windows = 0;         // model runs (one per document without a stride)
  int64_t truncated_docs = 0;  // documents cut to the context (stride 0 only)
  int64_t stride = 0;
  int64_t kv_bytes_per_token = 0;  // at 2 bytes per element (a bf16 cache)
};

// A document's ids as the evaluation, the conversion's calibration and
// dha-tokenize's shards read them, by document_protocol(tokenizer): BOS +
// encode(text) for a model that starts documents with BOS; separator +
// encode(text) for one pre-trained on documents separated by a token (GPT-2's
// <|endoftext|>: the token the model saw right before every document, so its
// first token is predicted as in pre-training, and a calibration stream of
// such documents is packed as the pre-training stream was); else encode(text).
// The first id is given, every later one is predicted.
std::vector<int32_t> encode_document(const Tokenizer& tokenizer, const std::string& text);

// Scores each document as encode_document(doc), predicting every token after
// the first. `max_docs` <= 0: all. A document longer than the model's context C:
// - stride 0: truncated to its first C ids (C - 1 predicted tokens; the rest
//   of the document is not scored, and `truncated_docs` counts it);
// - stride S in 1..C: scored whole by sliding windows of C ids, as in Hugging
//   Face's perplexity guide: the first window scores every prediction it makes
//   (ids 1..C, the last from its final position), and each later window,
//   S ids further on, ends right before its last target and scores only the
//   ids not scored before (at most S). Every id after the first is scored
//   exactly once, with at least C - S + 1 ids of left context after the first
//   window; a later window starts mid-document, without BOS. S = C gives
//   disjoint windows; smaller S more context and more runs.
// A document of at most C ids is one window either way. Throws (one line) for
// a stride outside 0..C.
EvalResult evaluate_nll(Llama& model, const Tokenizer& tokenizer,
                        const std::vector<std::string>& docs, int64_t max_docs = 0,
                        bool show_progress = false, int64_t stride = 0);

// The same protocol on documents already tokenized (each as encode_document
// gives it), e.g. the held-out split of a dha-tokenize directory. `forward`:
// the converter's instruments for every window (no cache).
EvalResult evaluate_token_docs(Llama& model, const std::vector<std::vector<int32_t>>& docs,
                               int64_t max_docs = 0, bool show_progress = false, int64_t stride = 0,
                               const ForwardOptions& forward = {});

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  double temperature = 1.0;  // 0: greedy
  double top_p = 0.9;        // nucleus sampling; >= 1 disables
  uint64_t seed = 0;
};

// Greedy argmax or temperature/top-p sampling (deterministic for a seed).
int32_t sample_token(const torch::Tensor& logits, double temperature, double top_p, std::mt19937_64& rng);

// Streams the prompt (as its tokens decode) and then the continuation to
// `emit`. Stops after max_new_tokens, at end-of-sequence (EOS, or BOS that
// starts a new document as in llama2.c), or at the model's context. Returns
// the generated token ids (without the prompt).
std::vector<int32_t> generate(Llama& model, const Tokenizer& tokenizer, const std::string& prompt,
                              const GenerateOptions& options,
                              const std::function<void(const std::string&)>& emit);

}  // namespace dha
