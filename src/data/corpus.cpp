// dha-tokenize's library side: documents (any corpus format, streamed) -> token
// shards, each document as encode_document gives it (BOS-led, separator-led, or
// as is) and indexed, encoded by a pool of threads in batches and written in
// input order.
#include "dha/corpus.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>

#include "dha/data.h"
#include "dha/error.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/progress.h"

namespace dha {

size_t heldout_start(size_t n_docs, double heldout) {
  if (heldout <= 0.0) return n_docs;
  const size_t held = static_cast<size_t>(std::ceil(heldout * static_cast<double>(n_docs)));
  return n_docs - std::min(n_docs, std::max<size_t>(held, 1));
}

namespace {

class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string split, int64_t vocab, int64_t shard_tokens, DocumentProtocol protocol)
      : dir_(std::move(dir)), split_(std::move(split)), vocab_(vocab), shard_tokens_(shard_tokens),
        protocol_(protocol) {}

  void add_document(const std::vector<int32_t>& ids) {
    if (ids.empty()) return;  // an empty text under the "given" protocol: nothing to store
    if (!buffer_.empty() && static_cast<int64_t>(buffer_.size() + ids.size()) > shard_tokens_) flush();
    starts_.push_back(static_cast<int64_t>(buffer_.size()));
    buffer_.insert(buffer_.end(), ids.begin(), ids.end());
    total_docs_ += 1;
    total_tokens_ += static_cast<int64_t>(ids.size());
  }
  void flush() {
    if (buffer_.empty()) return;
    char name[64];
    std::snprintf(name, sizeof(name), "%s-%05lld.tok", split_.c_str(), static_cast<long long>(shards_));
    write_token_shard(dir_ + "/" + name, buffer_, vocab_, starts_, protocol_);
    buffer_.clear();
    starts_.clear();
    shards_ += 1;
  }
  int64_t tokens() const { return total_tokens_; }
  int64_t docs() const { return total_docs_; }
  int64_t shards() const { return shards_; }

 private:
  std::string dir_, split_;
  int64_t vocab_, shard_tokens_;
  DocumentProtocol protocol_;
  std::vector<int32_t> buffer_;
  std::vector<int64_t> starts_;  // each buffered document's first position
  int64_t total_docs_ = 0, total_tokens_ = 0, shards_ = 0;
};

// Encodes documents[i] into ids[i], `threads` workers taking the next
// document as they free up; the result does not depend on the thread count.
void encode_documents(const Tokenizer& tokenizer, const std::vector<std::string>& documents,
                      std::vector<std::vector<int32_t>>& ids, int threads) {
  ids.assign(documents.size(), {});
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto work = [&] {
    try {
      for (size_t i = next++; i < documents.size(); i = next++) ids[i] = encode_document(tokenizer, documents[i]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = documents.size();
    }
  };
  const int workers = std::max(1, std::min<int>(threads, static_cast<int>(documents.size())));
  std::vector<std::thread> pool;
  for (int t = 1; t < workers; ++t) pool.emplace_back(work);
  work();
  for (auto& thread : pool) thread.join();
  if (error) std::rethrow_exception(error);
}

std::string rate_text(double value, const char* unit) {
  char text[64];
  if (value >= 1e6)
    std::snprintf(text, sizeof(text), "%.2fM %s/s", value / 1e6, unit);
  else if (value >= 1e3)
    std::snprintf(text, sizeof(text), "%.1fk %s/s", value / 1e3, unit);
  else
    std::snprintf(text, sizeof(text), "%.0f %s/s", value, unit);
  return text;
}

}  // namespace

CorpusSummary tokenize_corpus(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                              const std::string& out_dir, const CorpusOptions& options, bool show_progress) {
  if (files.empty()) fail("dha-tokenize: no input files");
  if (options.heldout < 0.0 || options.heldout >= 1.0)
    fail("--heldout ", options.heldout, " must be in [0, 1)");
  if (options.shard_tokens < 1) fail("--shard-tokens must be positive");
  if (options.threads < 0) fail("--threads ", options.threads, " must be 0 (every core) or more");
  const int threads =
      options.threads > 0 ? options.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const auto started = std::chrono::steady_clock::now();
  const DocumentProtocol protocol = document_protocol(tokenizer);
  ShardWriter train(out_dir, "train", tokenizer.vocab_size(), options.shard_tokens, protocol);
  ShardWriter heldout(out_dir, "heldout", tokenizer.vocab_size(), options.shard_tokens, protocol);
  int64_t total_bytes = 0;
  for (const auto& file : files) total_bytes += static_cast<int64_t>(std::filesystem::file_size(file));
  // Progress in MiB of the files on disk (compressed bytes for .gz/.zst).
  Progress progress("tokenize", std::max<int64_t>(1, total_bytes >> 20), "MiB");
  CorpusSummary summary;
  summary.protocol = protocol;
  summary.threads = threads;
  int64_t bytes_before = 0, docs_done = 0, tokens_done = 0;
  std::vector<std::string> batch;
  std::vector<std::vector<int32_t>> batch_ids;
  for (size_t f = 0; f < files.size(); ++f) {
    const std::string& file = files[f];
    CorpusFileSummary stats;
    stats.path = file;
    stats.format = document_format_name(file);
    // The held-out split needs the file's document count before its last documents arrive.
    const int64_t n_docs = options.heldout > 0 ? count_documents(file, options.input) : -1;
    if (n_docs == 0) fail(file, ": holds no document");
    const int64_t split =
        n_docs < 0 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(heldout_start(n_docs, options.heldout));
    if (split == 0) fail(file, ": all of its ", n_docs, " documents would be held out; lower --heldout");
    const auto reader = open_documents(file, options.input);
    std::string document;
    bool more = true;
    while (more) {
      batch.clear();
      int64_t batch_bytes = 0;
      while (batch_bytes < options.batch_bytes && (more = reader->next(document))) {
        batch_bytes += static_cast<int64_t>(document.size());
        batch.push_back(std::move(document));
      }
      encode_documents(tokenizer, batch, batch_ids, threads);
      for (const auto& ids : batch_ids) {
        (stats.docs < split ? train : heldout).add_document(ids);
        stats.docs += 1;
        stats.tokens += static_cast<int64_t>(ids.size());
      }
      docs_done += static_cast<int64_t>(batch.size());
      tokens_done += static_cast<int64_t>(std::accumulate(
          batch_ids.begin(), batch_ids.end(), size_t{0}, [](size_t n, const auto& ids) { return n + ids.size(); }));
      if (show_progress) {
        const double seconds =
            std::max(1e-9, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        progress.update((bytes_before + reader->bytes_read()) >> 20,
                        rate_text(docs_done / seconds, "docs") + ", " + rate_text(tokens_done / seconds, "tokens") +
                            ", file " + std::to_string(f + 1) + "/" + std::to_string(files.size()));
      }
    }
    if (stats.docs == 0) fail(file, ": holds no document");
    stats.skipped = reader->skipped();
    stats.empty = reader->empty();
    stats.bytes = static_cast<int64_t>(std::filesystem::file_size(file));
    bytes_before += stats.bytes;
    summary.skipped += stats.skipped;
    summary.empty += stats.empty;
    summary.files.push_back(std::move(stats));
  }
  train.flush();
  heldout.flush();
  if (show_progress) progress.finish();
  summary.train_tokens = train.tokens();
  summary.train_docs = train.docs();
  summary.train_shards = train.shards();
  summary.heldout_tokens = heldout.tokens();
  summary.heldout_docs = heldout.docs();
  summary.heldout_shards = heldout.shards();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return summary;
}

}  // namespace dha
