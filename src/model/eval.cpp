// Mean NLL over documents, token sampling and generation with the KV cache.
#include "dha/eval.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "dha/error.h"
#include "dha/progress.h"

namespace dha {
namespace {

// -sum log p(ids[begin + p + 1]) for the predictions at positions p in
// [from, to) of the model run on the window ids[begin, begin + n).
double window_nll(Llama& model, const std::vector<int32_t>& ids, int64_t begin, int64_t n, int64_t from,
                  int64_t to, const torch::Device& device, const ForwardOptions& forward) {
  const torch::Tensor tokens =
      torch::tensor(std::vector<int64_t>(ids.begin() + begin, ids.begin() + begin + n), torch::kInt64)
          .unsqueeze(0)
          .to(device);
  const torch::Tensor logits = model->forward(tokens, forward).to(torch::kFloat32);
  const torch::Tensor log_probs = torch::log_softmax(logits.narrow(1, from, to - from), -1);
  const torch::Tensor targets =
      torch::tensor(std::vector<int64_t>(ids.begin() + begin + from + 1, ids.begin() + begin + to + 1),
                    torch::kInt64)
          .view({1, -1, 1})
          .to(device);
  return -log_probs.gather(-1, targets).to(torch::kFloat64).sum().item<double>();
}

void check_stride(int64_t stride, int64_t context) {
  if (stride < 0 || stride > context)
    fail("--stride ", stride, " must be between 1 and the model's context (", context, ")");
}

}  // namespace

bool is_blank_line(std::string_view line) {
  return line.find_first_not_of(std::string_view(" \t\r\f\v")) == std::string_view::npos;
}

std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  // The open document: from the start of its first line to the end of its
  // last line's text (before that line's "\n" or "\r\n").
  size_t begin = std::string::npos, end = 0;
  const auto close = [&] {
    if (begin != std::string::npos) docs.push_back(text.substr(begin, end - begin));
    begin = std::string::npos;
  };
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t line_end = text.find('\n', pos);
    const bool has_break = line_end != std::string::npos;
    if (!has_break) line_end = text.size();
    if (is_blank_line(std::string_view(text).substr(pos, line_end - pos))) {
      close();
    } else {
      if (begin == std::string::npos) begin = pos;
      end = has_break && text[line_end - 1] == '\r' ? line_end - 1 : line_end;
    }
    pos = line_end + 1;
  }
  close();
  return docs;
}

std::vector<int32_t> encode_document(const Tokenizer& tokenizer, const std::string& text) {
  const DocumentProtocol protocol = document_protocol(tokenizer);
  if (protocol.first_token == FirstToken::kBos) return tokenizer.encode(text, /*bos=*/true, /*eos=*/false);
  std::vector<int32_t> ids = tokenizer.encode(text, /*bos=*/false, /*eos=*/false);
  if (protocol.first_token == FirstToken::kSeparator) ids.insert(ids.begin(), protocol.token_id);
  return ids;
}

EvalResult evaluate_nll(Llama& model, const Tokenizer& tokenizer, const std::vector<std::string>& docs,
                        int64_t max_docs, bool show_progress, int64_t stride) {
  check_stride(stride, model->config().max_seq_len);
  const int64_t n_docs = max_docs > 0 ? std::min<int64_t>(max_docs, docs.size()) : docs.size();
  std::vector<std::vector<int32_t>> tokenized;
  tokenized.reserve(n_docs);
  for (int64_t d = 0; d < n_docs; ++d) tokenized.push_back(encode_document(tokenizer, docs[d]));
  return evaluate_token_docs(model, tokenized, 0, show_progress, stride);
}

EvalResult evaluate_token_docs(Llama& model, const std::vector<std::vector<int32_t>>& docs, int64_t max_docs,
                               bool show_progress, int64_t stride, const ForwardOptions& forward) {
  if (forward.cache) fail("evaluate_token_docs: the evaluation runs without a KV cache");
  torch::NoGradGuard no_grad;
  const ModelConfig& config = model->config();
  const int64_t context = config.max_seq_len;
  check_stride(stride, context);
  const int64_t n_docs = max_docs > 0 ? std::min<int64_t>(max_docs, docs.size()) : docs.size();
  const auto device = model->model->embed_tokens->weight.device();
  Progress progress("eval", n_docs, "docs");
  double total_nll = 0.0;
  EvalResult result;
  result.stride = stride;
  for (int64_t d = 0; d < n_docs; ++d) {
    const std::vector<int32_t>& ids = docs[d];
    const int64_t length = static_cast<int64_t>(ids.size());
    if (length < 2) continue;  // nothing to predict
    if (stride == 0 || length <= context) {
      // One window: the document, or its first `context` ids.
      const int64_t n = std::min(length, context);
      total_nll += window_nll(model, ids, 0, n, 0, n - 1, device, forward);
      result.tokens += n - 1;
      result.windows += 1;
      result.truncated_docs += length > context ? 1 : 0;
    } else {
      // Sliding windows of `context` ids. The first scores every prediction it
      // makes (targets 1..context, the last from its final position); each
      // later one ends right before its last target, `stride` targets further
      // on, and scores only the targets after those already scored.
      total_nll += window_nll(model, ids, 0, context, 0, context, device, forward);
      int64_t scored = context;  // targets 1..scored are done
      result.windows += 1;
      while (scored < length - 1) {
        const int64_t last = std::min(scored + stride, length - 1);
        const int64_t begin = last - context;
        total_nll += window_nll(model, ids, begin, context, scored - begin, context, device, forward);
        scored = last;
        result.windows += 1;
      }
      result.tokens += length - 1;
    }
    result.docs += 1;
    if (show_progress) progress.update(d + 1);
  }
  if (show_progress) progress.finish();
  if (result.tokens == 0) fail("evaluation: no document has a token to predict");
  result.mean_nll = total_nll / static_cast<double>(result.tokens);
  result.ppl = std::exp(result.mean_nll);
  result.kv_bytes_per_token = config.kv_bytes_per_token(2);
  return result;
}

int32_t sample_token(const torch::Tensor& logits, double temperature, double top_p, std::mt19937_64& rng) {
  const torch::Tensor row = logits.reshape({-1}).to(torch::kCPU, torch::kFloat64);
  if (temperature <= 0.0) return static_cast<int32_t>(row.argmax().item<int64_t>());
  torch::Tensor probs = torch::softmax(row / temperature, -1);
  torch::Tensor order;
  if (top_p > 0.0 && top_p < 1.0) {
    // Nucleus: the smallest set of most likely tokens whose mass reaches top_p.
    auto [sorted, indices] = probs.sort(/*dim=*/-1, /*descending=*/true);
    const torch::Tensor mass_before = sorted.cumsum(-1) - sorted;
    const int64_t keep = std::max<int64_t>(1, (mass_before < top_p).sum().item<int64_t>());
    probs = sorted.narrow(0, 0, keep);
    order = indices.narrow(0, 0, keep);
  }
  const double total = probs.sum().item<double>();
  const double coin = std::uniform_real_distribution<double>(0.0, total)(rng);
  const auto p = probs.accessor<double, 1>();
  double cumulative = 0.0;
  int64_t pick = p.size(0) - 1;
  for (int64_t i = 0; i < p.size(0); ++i) {
    cumulative += p[i];
    if (coin < cumulative) {
      pick = i;
      break;
    }
  }
  return static_cast<int32_t>(order.defined() ? order[pick].item<int64_t>() : pick);
}

std::vector<int32_t> generate(Llama& model, const Tokenizer& tokenizer, const std::string& prompt,
                              const GenerateOptions& options,
                              const std::function<void(const std::string&)>& emit) {
  torch::NoGradGuard no_grad;
  const ModelConfig& config = model->config();
  const std::vector<int32_t> prompt_ids = tokenizer.encode(prompt, /*bos=*/true, /*eos=*/false);
  const int64_t n_prompt = static_cast<int64_t>(prompt_ids.size());
  if (n_prompt >= config.max_seq_len)
    fail("the prompt is ", n_prompt, " tokens but the model's context is ", config.max_seq_len,
         "; shorten the prompt");
  for (int64_t i = 1; i < n_prompt; ++i) emit(tokenizer.decode_piece(prompt_ids[i - 1], prompt_ids[i]));

  const auto device = model->model->embed_tokens->weight.device();
  const int64_t capacity = std::min(config.max_seq_len, n_prompt + std::max<int64_t>(options.max_new_tokens, 0));
  KVCache cache = model->make_cache(1, capacity, model->model->embed_tokens->weight.scalar_type());
  std::mt19937_64 rng(options.seed);
  auto as_tensor = [&](const std::vector<int32_t>& ids) {
    return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).unsqueeze(0).to(device);
  };
  torch::Tensor logits = model->forward(as_tensor(prompt_ids), &cache).select(1, n_prompt - 1);
  std::vector<int32_t> generated;
  int32_t previous = prompt_ids.back();
  while (static_cast<int64_t>(generated.size()) < options.max_new_tokens) {
    const int32_t next = sample_token(logits, options.temperature, options.top_p, rng);
    if (next == tokenizer.eos_id() || next == tokenizer.bos_id()) break;
    generated.push_back(next);
    emit(tokenizer.decode_piece(previous, next));
    previous = next;
    if (cache.length >= capacity) break;  // context full
    logits = model->forward(as_tensor({next}), &cache).select(1, 0);
  }
  return generated;
}

}  // namespace dha
