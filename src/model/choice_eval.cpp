// Multiple-choice log-likelihoods, acc and acc_norm as lm-evaluation-harness
// computes them (lm_eval/models/huggingface.py _encode_pair and
// _loglikelihood_tokens; lm_eval/api/task.py process_results).
#include "dha/choice_eval.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/progress.h"
#include "../tokenizer/pretokenize.h"

namespace dha {

namespace {

bool python_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// The length of the run of whitespace (Python's str.isspace) ending `text`, in bytes.
size_t trailing_space_bytes(const std::string& text) {
  size_t run = text.size();  // where the trailing run starts
  for (size_t i = 0; i < text.size();) {
    uint32_t cp = 0;
    const size_t n = bpe::utf8_sequence(text, i, &cp);  // 0: a stray byte, no space
    if (n == 0 || !python_space(cp))
      run = text.size();
    else if (run == text.size())
      run = i;
    i += std::max<size_t>(n, 1);
  }
  return text.size() - run;
}

// Python's len(): code points of UTF-8 text.
int64_t code_points(const std::string& text) {
  int64_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

std::vector<int32_t> encode_led(const Tokenizer& tokenizer, const std::string& text, ChoiceFirstToken first) {
  if (first == ChoiceFirstToken::kDocument) return encode_document(tokenizer, text);
  const bool bos = first == ChoiceFirstToken::kTokenizer && tokenizer.add_bos_by_default();
  return tokenizer.encode(text, bos, /*eos=*/false);
}

// lm-eval's prefix_token_id: BOS when the tokenizer has one, else EOS.
int32_t prefix_token(const Tokenizer& tokenizer) {
  return tokenizer.bos_id() >= 0 ? tokenizer.bos_id() : tokenizer.eos_id();
}

double mean_stderr(double p, int64_t n) {
  return n > 1 ? std::sqrt(p * (1.0 - p) * static_cast<double>(n) / static_cast<double>(n - 1) / static_cast<double>(n))
               : 0.0;
}

// log p(targets) and whether each is the argmax, from logits [..., vocab]
// without a second vocabulary-sized tensor.
void add_scores(const torch::Tensor& logits, const torch::Tensor& targets, torch::Tensor& ll, torch::Tensor& greedy) {
  const torch::Tensor scores = logits.to(torch::kFloat32);
  ll = (scores.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - scores.logsumexp(-1)).to(torch::kFloat64).cpu();
  greedy = scores.argmax(-1).eq(targets).cpu();
}

// Scores requests[order[begin..end)) in one right-padded forward pass.
void score_batch(Llama& model, std::vector<ChoiceRequest>& requests, const std::vector<size_t>& order, size_t begin,
                 size_t end, int64_t context, const torch::Device& device) {
  const int64_t b = static_cast<int64_t>(end - begin);
  std::vector<std::vector<int64_t>> wholes;  // each request's ids as the model reads them, with the last target
  int64_t width = 1;
  for (size_t i = begin; i < end; ++i) {
    const ChoiceRequest& r = requests[order[i]];
    std::vector<int64_t> whole(r.context_ids.begin(), r.context_ids.end());
    whole.insert(whole.end(), r.continuation_ids.begin(), r.continuation_ids.end());
    // lm-eval: (context + continuation)[-(max_length + 1):][:-1]
    if (static_cast<int64_t>(whole.size()) > context + 1) whole.erase(whole.begin(), whole.end() - (context + 1));
    width = std::max<int64_t>(width, static_cast<int64_t>(whole.size()) - 1);
    wholes.push_back(std::move(whole));
  }
  // Inputs whole[:-1], targets whole[1:], right-padded.
  torch::Tensor inputs = torch::zeros({b, width}, torch::kInt64), targets = torch::zeros({b, width}, torch::kInt64);
  for (int64_t row = 0; row < b; ++row) {
    const torch::Tensor ids = torch::tensor(wholes[row], torch::kInt64);
    const int64_t n = ids.size(0) - 1;
    inputs[row].narrow(0, 0, n).copy_(ids.narrow(0, 0, n));
    targets[row].narrow(0, 0, n).copy_(ids.narrow(0, 1, n));
  }
  torch::Tensor ll, greedy;
  add_scores(model->forward(inputs.to(device)), targets.to(device), ll, greedy);
  for (int64_t row = 0; row < b; ++row) {
    ChoiceRequest& r = requests[order[begin + row]];
    const int64_t n = static_cast<int64_t>(r.continuation_ids.size());
    const int64_t first = static_cast<int64_t>(wholes[row].size()) - 1 - n;  // predicts the first continuation token
    r.loglikelihood = ll[row].narrow(0, first, n).sum().item<double>();
    r.is_greedy = greedy[row].narrow(0, first, n).all().item<bool>();
  }
}

// Whether an item's requests can share one pass over their context: the same
// context ids for every choice (lm-eval's rule gives that unless the context
// ends in whitespace, which moves into each continuation the same way) and no
// request longer than the model's window (those are cut on the left).
bool shares_context(const std::vector<ChoiceRequest>& requests, size_t begin, size_t end, int64_t context) {
  for (size_t i = begin; i < end; ++i) {
    const ChoiceRequest& r = requests[i];
    if (r.context_ids != requests[begin].context_ids) return false;
    if (static_cast<int64_t>(r.context_ids.size() + r.continuation_ids.size()) > context + 1) return false;
  }
  return true;
}

// Scores the choices of items whose contexts are the same length, each given
// as its [begin, end) of `requests`: the contexts run once, together; every
// choice continues from a copy of its item's KV cache, all choices together
// (right-padded). The same log-likelihoods as scoring each context +
// continuation whole, to rounding.
void score_shared_contexts(Llama& model, std::vector<ChoiceRequest>& requests,
                           const std::vector<std::pair<size_t, size_t>>& items, const torch::Device& device) {
  const int64_t b = static_cast<int64_t>(items.size());
  const int64_t length = static_cast<int64_t>(requests[items[0].first].context_ids.size());
  torch::Tensor contexts = torch::empty({b, length}, torch::kInt64);
  std::vector<int64_t> row_item;  // each choice's item
  int64_t longest = 0;
  for (int64_t i = 0; i < b; ++i) {
    const auto& ids = requests[items[i].first].context_ids;
    contexts[i].copy_(torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64));
    for (size_t r = items[i].first; r < items[i].second; ++r) {
      row_item.push_back(i);
      longest = std::max<int64_t>(longest, static_cast<int64_t>(requests[r].continuation_ids.size()));
    }
  }
  const int64_t rows = static_cast<int64_t>(row_item.size());
  const auto dtype = model->model->embed_tokens->weight.scalar_type();
  KVCache shared = model->make_cache(b, length, dtype);
  const torch::Tensor last = model->forward(contexts.to(device), &shared).select(1, length - 1);  // [b, vocab]
  const torch::Tensor item_of_row = torch::tensor(row_item, torch::kInt64).to(device);
  // Every choice's first token is predicted by its context's last position.
  torch::Tensor targets = torch::zeros({rows, longest}, torch::kInt64);
  int64_t row = 0;
  for (const auto& [begin, end] : items)
    for (size_t r = begin; r < end; ++r, ++row)
      for (size_t j = 0; j < requests[r].continuation_ids.size(); ++j)
        targets[row][static_cast<int64_t>(j)] = requests[r].continuation_ids[j];
  torch::Tensor first_ll, first_greedy, rest_ll, rest_greedy;
  add_scores(last.index_select(0, item_of_row), targets.select(1, 0).to(device), first_ll, first_greedy);
  if (longest > 1) {
    KVCache cache = model->make_cache(rows, length + longest - 1, dtype);
    for (size_t l = 0; l < cache.k.size(); ++l) {
      cache.k[l].narrow(2, 0, length).copy_(shared.k[l].index_select(0, item_of_row));
      cache.v[l].narrow(2, 0, length).copy_(shared.v[l].index_select(0, item_of_row));
    }
    cache.length = length;
    // Inputs: each continuation but its last token; targets: from its second.
    const torch::Tensor inputs = targets.narrow(1, 0, longest - 1).to(device);
    add_scores(model->forward(inputs, &cache), targets.narrow(1, 1, longest - 1).to(device), rest_ll, rest_greedy);
  }
  row = 0;
  for (const auto& [begin, end] : items)
    for (size_t r = begin; r < end; ++r, ++row) {
      ChoiceRequest& q = requests[r];
      double ll = first_ll[row].item<double>();
      bool greedy = first_greedy[row].item<bool>();
      for (size_t j = 1; j < q.continuation_ids.size(); ++j) {
        ll += rest_ll[row][static_cast<int64_t>(j) - 1].item<double>();
        greedy = greedy && rest_greedy[row][static_cast<int64_t>(j) - 1].item<bool>();
      }
      q.loglikelihood = ll;
      q.is_greedy = greedy;
    }
}

}  // namespace

std::vector<ChoiceItem> read_choice_task(const std::string& path) {
  const std::string text = io::read_file(path);
  std::vector<ChoiceItem> items;
  size_t pos = 0;
  int64_t line_number = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    line_number += 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_number) + ": ";
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail(where, "not JSON (", e.what(), ")");
    }
    if (!record.is_object()) fail(where, "an item is a JSON object {\"context\", \"choices\", \"gold\"}");
    ChoiceItem item;
    const auto context = record.find("context");
    if (context == record.end() || !context->is_string()) fail(where, "\"context\" must be a string");
    item.context = context->get<std::string>();
    const auto choices = record.find("choices");
    if (choices == record.end() || !choices->is_array() || choices->size() < 2)
      fail(where, "\"choices\" must be an array of at least two strings");
    for (const auto& choice : *choices) {
      if (!choice.is_string() || choice.get<std::string>().empty())
        fail(where, "every choice must be a non-empty string");
      item.choices.push_back(choice.get<std::string>());
    }
    const auto gold = record.find("gold");
    if (gold == record.end() || !gold->is_number_integer() || gold->get<int64_t>() < 0 ||
        gold->get<int64_t>() >= static_cast<int64_t>(item.choices.size()))
      fail(where, "\"gold\" must be the index of the right choice (0..", item.choices.size() - 1, ")");
    item.gold = gold->get<int64_t>();
    items.push_back(std::move(item));
  }
  if (items.empty()) fail(path, ": holds no item (one JSON object per line: context, choices, gold)");
  return items;
}

ChoiceEncoding encode_choice_pair(const Tokenizer& tokenizer, const std::string& context,
                                  const std::string& continuation, ChoiceFirstToken first) {
  ChoiceEncoding encoding;
  if (context.empty()) {
    // lm-eval: the prefix token, unless the continuation already begins with it.
    encoding.continuation = tokenizer.encode(continuation, false, false);
    const int32_t prefix = prefix_token(tokenizer);
    if (!encoding.continuation.empty() && encoding.continuation.front() == prefix)
      encoding.continuation.erase(encoding.continuation.begin());
    encoding.context = {prefix};
    if (encoding.continuation.empty()) fail("a choice encodes to no token of its own");
    return encoding;
  }
  const size_t spaces = trailing_space_bytes(context);
  const std::string head = context.substr(0, context.size() - spaces);
  const std::string tail = context.substr(context.size() - spaces) + continuation;
  const std::vector<int32_t> whole = encode_led(tokenizer, head + tail, first);
  encoding.context = encode_led(tokenizer, head, first);
  // lm-eval cuts `whole` at the context's length even where the context's last
  // token and the continuation's first merge (the model then reads
  // context + that cut, as here).
  if (encoding.context.size() < whole.size())
    encoding.continuation.assign(whole.begin() + static_cast<int64_t>(encoding.context.size()), whole.end());
  if (encoding.continuation.empty()) fail("a choice of this context encodes to no token of its own");
  return encoding;
}

ChoiceTaskResult evaluate_choice_task(Llama& model, const Tokenizer& tokenizer, const std::vector<ChoiceItem>& items,
                                      ChoiceFirstToken first, int64_t batch, bool show_progress, bool share_context) {
  if (batch < 1) fail("--batch ", batch, " must be at least 1");
  torch::NoGradGuard no_grad;
  const int64_t context = model->config().max_seq_len;
  const auto device = model->model->embed_tokens->weight.device();
  ChoiceTaskResult result;
  result.items = static_cast<int64_t>(items.size());
  for (size_t i = 0; i < items.size(); ++i)
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      ChoiceRequest r;
      r.item = static_cast<int64_t>(i);
      r.choice = static_cast<int64_t>(c);
      ChoiceEncoding e = encode_choice_pair(tokenizer, items[i].context, items[i].choices[c], first);
      r.context_ids = std::move(e.context);
      r.continuation_ids = std::move(e.continuation);
      result.requests.push_back(std::move(r));
    }
  // Items whose choices share their context run it once (score_shared_contexts),
  // `batch` items of one context length at a time; the others are scored
  // whole, `batch` requests at a time.
  Progress progress("choices", static_cast<int64_t>(result.requests.size()), "requests");
  std::vector<size_t> order;
  std::map<size_t, std::vector<std::pair<size_t, size_t>>> by_length;  // context length -> items
  for (size_t at = 0, i = 0; i < items.size(); at += items[i].choices.size(), ++i) {
    const size_t end = at + items[i].choices.size();
    if (share_context && shares_context(result.requests, at, end, context))
      by_length[result.requests[at].context_ids.size()].push_back({at, end});
    else
      for (size_t r = at; r < end; ++r) order.push_back(r);
  }
  int64_t done = 0;
  for (const auto& [length, group] : by_length)
    for (size_t g = 0; g < group.size(); g += static_cast<size_t>(batch)) {
      const std::vector<std::pair<size_t, size_t>> chunk(
          group.begin() + static_cast<int64_t>(g), group.begin() + static_cast<int64_t>(std::min(group.size(), g + batch)));
      score_shared_contexts(model, result.requests, chunk, device);
      for (const auto& [begin, end] : chunk) done += static_cast<int64_t>(end - begin);
      if (show_progress) progress.update(done);
    }
  // Longest first, so that a batch pads little (the scores do not depend on the order).
  const auto length = [&](size_t i) {
    return result.requests[i].context_ids.size() + result.requests[i].continuation_ids.size();
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return length(a) > length(b); });
  for (size_t begin = 0; begin < order.size(); begin += static_cast<size_t>(batch)) {
    const size_t end = std::min(order.size(), begin + static_cast<size_t>(batch));
    score_batch(model, result.requests, order, begin, end, context, device);
    done += static_cast<int64_t>(end - begin);
    if (show_progress) progress.update(done);
  }
  if (show_progress) progress.finish();
  // np.argmax: the first of equal maxima.
  size_t at = 0;
  double correct = 0, correct_norm = 0;
  for (const ChoiceItem& item : items) {
    size_t best = 0, best_norm = 0;
    for (size_t c = 0; c < item.choices.size(); ++c) {
      const double ll = result.requests[at + c].loglikelihood;
      if (ll > result.requests[at + best].loglikelihood) best = c;
      const auto norm = [&](size_t k) {
        return result.requests[at + k].loglikelihood / static_cast<double>(code_points(item.choices[k]));
      };
      if (norm(c) > norm(best_norm)) best_norm = c;
    }
    correct += static_cast<int64_t>(best) == item.gold;
    correct_norm += static_cast<int64_t>(best_norm) == item.gold;
    at += item.choices.size();
  }
  result.acc = correct / static_cast<double>(result.items);
  result.acc_norm = correct_norm / static_cast<double>(result.items);
  result.acc_stderr = mean_stderr(result.acc, result.items);
  result.acc_norm_stderr = mean_stderr(result.acc_norm, result.items);
  return result;
}

}  // namespace dha
