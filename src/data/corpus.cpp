// dha-tokenize's library side: documents -> token shards, each document as
// encode_document gives it (BOS-led, separator-led, or as is) and indexed.
#include "dha/corpus.h"

#include <cmath>

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

}  // namespace

CorpusSummary tokenize_corpus(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                              const std::string& out_dir, const CorpusOptions& options, bool show_progress) {
  if (files.empty()) fail("dha-tokenize: no input files");
  if (options.heldout < 0.0 || options.heldout >= 1.0)
    fail("--heldout ", options.heldout, " must be in [0, 1)");
  if (options.shard_tokens < 1) fail("--shard-tokens must be positive");
  const DocumentProtocol protocol = document_protocol(tokenizer);
  ShardWriter train(out_dir, "train", tokenizer.vocab_size(), options.shard_tokens, protocol);
  ShardWriter heldout(out_dir, "heldout", tokenizer.vocab_size(), options.shard_tokens, protocol);
  for (const auto& file : files) {
    const std::vector<std::string> docs = split_documents(io::read_file(file));
    if (docs.empty()) fail(file, ": holds no text");
    const size_t split = heldout_start(docs.size(), options.heldout);
    if (split == 0) fail(file, ": all of its ", docs.size(), " documents would be held out; lower --heldout");
    Progress progress("tokenize " + file, static_cast<int64_t>(docs.size()), "docs");
    for (size_t d = 0; d < docs.size(); ++d) {
      const std::vector<int32_t> ids = encode_document(tokenizer, docs[d]);
      (d < split ? train : heldout).add_document(ids);
      if (show_progress) progress.update(static_cast<int64_t>(d + 1));
    }
    if (show_progress) progress.finish();
  }
  train.flush();
  heldout.flush();
  CorpusSummary summary;
  summary.protocol = protocol;
  summary.train_tokens = train.tokens();
  summary.train_docs = train.docs();
  summary.train_shards = train.shards();
  summary.heldout_tokens = heldout.tokens();
  summary.heldout_docs = heldout.docs();
  summary.heldout_shards = heldout.shards();
  return summary;
}

}  // namespace dha
