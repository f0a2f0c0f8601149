// Zero-shot multiple-choice evaluation, scored as lm-evaluation-harness scores
// its `multiple_choice` tasks (ARC, HellaSwag, PIQA, ...): the log-likelihood
// of each choice as the continuation of the context; acc picks the most
// likely choice, acc_norm the most likely per character of the choice.
//
// A task is a JSONL file, one item per line:
//   {"context": "Question: ...\nAnswer:", "choices": [" yes", " no"], "gold": 0}
// The continuation is the choice exactly as written (lm-eval's task YAML with
// target_delimiter: "" scores the same strings).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dha/model.h"
#include "dha/tokenizer.h"

namespace dha {

struct ChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t gold = 0;
};

// The items of a task file; a bad record is one error naming file, line and field.
std::vector<ChoiceItem> read_choice_task(const std::string& path);

// What leads the context's own tokens:
// - kTokenizer: what the tokenizer adds by default (BOS for sentencepiece and
//   llama2.c, a byte-level BPE's add_bos_token): lm-eval's hf model with
//   add_bos_token unset (lm-eval 0.4.13 encodes with the tokenizer's defaults);
// - kDocument: the document protocol (dha/tokenizer.h) as dha-eval --text reads
//   documents: the same as kTokenizer except that a separator-led model (GPT-2's
//   <|endoftext|>) gets its separator;
// - kNone: nothing (lm-eval's add_bos_token=False).
// An empty context is led by lm-eval's prefix token either way: BOS, or EOS
// for a tokenizer without BOS.
enum class ChoiceFirstToken { kTokenizer, kDocument, kNone };

struct ChoiceEncoding {
  std::vector<int32_t> context, continuation;
};

// lm-eval's _encode_pair: trailing whitespace of the context (Python's
// str.isspace) moves to the front of the continuation; then whole =
// encode(context + continuation), context = encode(context), continuation =
// whole[len(context):] (so a merge across the boundary goes to the continuation).
ChoiceEncoding encode_choice_pair(const Tokenizer& tokenizer, const std::string& context,
                                  const std::string& continuation, ChoiceFirstToken first);

struct ChoiceRequest {
  int64_t item = 0, choice = 0;
  std::vector<int32_t> context_ids, continuation_ids;
  double loglikelihood = 0.0;  // sum of log p(continuation token) in nats
  bool is_greedy = false;      // every continuation token is the argmax
};

struct ChoiceTaskResult {
  int64_t items = 0;
  double acc = 0.0, acc_norm = 0.0;
  double acc_stderr = 0.0, acc_norm_stderr = 0.0;  // lm-eval's: sample std (n - 1) / sqrt(n)
  std::vector<ChoiceRequest> requests;             // item-major, choice order
};

// Scores every (item, choice) with the model. With `share_context` an item
// whose choices have the same context ids (and fit the model's window) runs
// its context once and continues every choice from a copy of its KV cache;
// the rest are scored whole in batches of `batch` requests (right-padded;
// causal attention makes the padding invisible). A request longer than the
// context + 1 keeps its last tokens, as lm-eval does. Both ways give the same
// log-likelihoods to rounding (tests/test_choice_eval.cpp).
ChoiceTaskResult evaluate_choice_task(Llama& model, const Tokenizer& tokenizer, const std::vector<ChoiceItem>& items,
                                      ChoiceFirstToken first, int64_t batch, bool show_progress,
                                      bool share_context = true);

}  // namespace dha
