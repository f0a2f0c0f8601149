// Token shards (memory-mapped, header-checked) and the resumable sequence sampler.
#include "dha/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "foreign_shards.h"

namespace dha {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'D', 'H', 'A', 'T', 'O', 'K', 0, 0};

struct RawHeader {
  char magic[8];
  uint32_t version;
  uint32_t width;
  uint64_t vocab;
  uint64_t count;
  uint64_t documents;
  uint32_t first_token;     // version 2: FirstToken code (kFirstTokenCodes); version 1: 0
  int32_t first_token_id;   // version 2: its id, -1 for none; version 1: 0
  uint8_t reserved[16];
};
static_assert(sizeof(RawHeader) == kShardHeaderBytes, "shard header is 64 bytes");

// The on-disk codes of FirstToken, in code order (fixed: they are the format).
constexpr FirstToken kFirstTokenCodes[] = {FirstToken::kBos, FirstToken::kSeparator, FirstToken::kGiven};

uint32_t first_token_code(FirstToken first_token) {
  for (uint32_t c = 0; c < 3; ++c)
    if (kFirstTokenCodes[c] == first_token) return c;
  return 2;
}

bool same_protocol(const DocumentProtocol& a, const DocumentProtocol& b) {
  return a.first_token == b.first_token && a.token_id == b.token_id;
}

std::string describe(const DocumentProtocol& p) {
  return std::string(first_token_name(p.first_token)) + (p.token_id >= 0 ? " (id " + std::to_string(p.token_id) + ")" : "");
}

}  // namespace

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size,
                       const std::vector<int64_t>& document_starts, const DocumentProtocol& protocol) {
  if ((protocol.first_token == FirstToken::kGiven) != (protocol.token_id < 0))
    fail(path, ": documents that begin with ", first_token_name(protocol.first_token), " need ",
         protocol.first_token == FirstToken::kGiven ? "no token id" : "a token id >= 0", " (got ", protocol.token_id, ")");
  const int64_t n_tokens = static_cast<int64_t>(tokens.size());
  for (size_t d = 0; d < document_starts.size(); ++d) {
    const int64_t start = document_starts[d];
    const int64_t previous = d == 0 ? -1 : document_starts[d - 1];
    if ((d == 0 && start != 0) || start <= previous || start >= n_tokens)
      fail(path, ": document ", d, " starts at ", start, " (expected ", d == 0 ? "0" : "after the previous start",
           ", inside the ", n_tokens, " tokens)");
    if (protocol.token_id >= 0 && tokens[start] != protocol.token_id)
      fail(path, ": document ", d, " begins with token ", tokens[start], ", not the ",
           first_token_name(protocol.first_token), " id ", protocol.token_id);
  }
  if (n_tokens > 0 && document_starts.empty()) fail(path, ": ", n_tokens, " tokens but no document starts");
  RawHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kShardVersion;
  h.width = vocab_size <= 65536 ? 2 : 4;
  h.vocab = static_cast<uint64_t>(vocab_size);
  h.count = tokens.size();
  h.documents = document_starts.size();
  h.first_token = first_token_code(protocol.first_token);
  h.first_token_id = protocol.token_id;
  std::string bytes(reinterpret_cast<const char*>(&h), sizeof(h));
  bytes.resize(sizeof(h) + tokens.size() * h.width + document_starts.size() * 8);
  char* out = bytes.data() + sizeof(h);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size)
      fail(path, ": token ", tokens[i], " at position ", i, " is outside the vocab of ", vocab_size);
    if (h.width == 2) {
      const uint16_t t = static_cast<uint16_t>(tokens[i]);
      std::memcpy(out + 2 * i, &t, 2);
    } else {
      const uint32_t t = static_cast<uint32_t>(tokens[i]);
      std::memcpy(out + 4 * i, &t, 4);
    }
  }
  char* index = out + tokens.size() * h.width;
  for (size_t d = 0; d < document_starts.size(); ++d) {
    const uint64_t start = static_cast<uint64_t>(document_starts[d]);
    std::memcpy(index + 8 * d, &start, 8);
  }
  io::write_file_atomic(path, bytes);
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open token shard (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ < static_cast<size_t>(kShardHeaderBytes) && foreign_shard_format(path).empty()) {
    ::close(fd);
    fail(path, ": ", map_size_, " bytes, shorter than the 64-byte token shard header");
  }
  if (map_size_ == 0) {  // an empty Megatron .bin: nothing to map
    ::close(fd);
    open_foreign();
    return;
  }
  void* map = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) fail(path, ": mmap failed (", std::strerror(errno), ")");
  map_ = static_cast<const uint8_t*>(map);
  RawHeader h{};
  std::memcpy(&h, map_, std::min(sizeof(h), map_size_));
  if (std::memcmp(h.magic, kMagic, 8) != 0) {
    open_foreign();
    return;
  }
  try {
    if (h.version != 1 && h.version != kShardVersion)
      fail(path, ": token shard version ", h.version, " is not supported (expected 1 or ", kShardVersion, ")");
    if (h.width != 2 && h.width != 4)
      fail(path, ": token width ", h.width, " bytes is invalid (expected 2 or 4)");
    if (h.vocab == 0 || h.vocab > (1ull << 31)) fail(path, ": vocab size ", h.vocab, " is invalid");
    if (h.width == 2 && h.vocab > 65536) fail(path, ": vocab ", h.vocab, " does not fit uint16 tokens");
    const uint64_t data_bytes = map_size_ - kShardHeaderBytes;
    // Version 2 ends with the document index (8 bytes per document).
    const uint64_t index_bytes = h.version == 1 ? 0 : h.documents * 8;
    if (h.version != 1 && h.documents > data_bytes / 8)
      fail(path, ": header says ", h.documents, " documents but the file holds ", data_bytes,
           " bytes after the header (truncated?)");
    if (h.count > (data_bytes - index_bytes) / h.width || h.count * h.width + index_bytes != data_bytes)
      fail(path, ": header says ", h.count, " tokens (", h.count * h.width, " bytes)",
           index_bytes ? " and " + std::to_string(h.documents) + " documents (" + std::to_string(index_bytes) +
                             " bytes of index)"
                       : std::string(),
           " but the file holds ", data_bytes, " bytes after the header",
           h.count * h.width + index_bytes > data_bytes ? " (truncated?)" : "");
    if (h.version == 1) {
      protocol_ = {FirstToken::kBos, -1};
    } else {
      if (h.first_token > 2) fail(path, ": first-token code ", h.first_token, " is invalid (expected 0, 1 or 2)");
      protocol_ = {kFirstTokenCodes[h.first_token], h.first_token_id};
      if ((protocol_.first_token == FirstToken::kGiven) != (protocol_.token_id < 0) ||
          protocol_.token_id >= static_cast<int64_t>(h.vocab))
        fail(path, ": first token ", describe(protocol_), " is invalid for a vocab of ", h.vocab);
      if (h.count > 0 && h.documents == 0) fail(path, ": ", h.count, " tokens but no documents in the index");
    }
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), map_size_);
    map_ = nullptr;
    throw;
  }
  width_ = h.width;
  count_ = static_cast<int64_t>(h.count);
  vocab_ = static_cast<int64_t>(h.vocab);
  documents_ = static_cast<int64_t>(h.documents);
  version_ = h.version;
  indexed_ = version_ >= 2;
  if (version_ == 1) return;
  // The index must describe the tokens: bad input is refused on open, not
  // when the held-out documents are first read.
  try {
    for (int64_t d = 0; d < documents_; ++d) {
      const int64_t start = document_start(d), previous = d == 0 ? -1 : document_start(d - 1);
      if ((d == 0 && start != 0) || start <= previous || start >= count_)
        fail(path, ": document index entry ", d, " is ", start, " (expected ",
             d == 0 ? "0" : "above the previous entry", " and below the ", count_, " tokens)");
      if (protocol_.token_id >= 0 && at(start) != protocol_.token_id)
        fail(path, ": document ", d, " begins with token ", at(start), ", not the header's ", describe(protocol_));
    }
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), map_size_);
    map_ = nullptr;
    throw;
  }
}

void TokenShard::open_foreign() {
  try {
    ForeignShardLayout layout;
    if (!parse_foreign_shard(path_, map_, map_size_, layout))
      fail(path_, ": not a token shard (bad magic: expected a dha .tok with magic DHATOK, an llm.c .bin with "
           "magic 20240520, or a Megatron-LM .bin beside its .idx; make shards with dha-tokenize)");
    format_ = layout.format;
    data_offset_ = layout.data_offset;
    width_ = layout.width;
    is_signed_ = layout.is_signed;
    count_ = layout.count;
    indexed_ = layout.indexed;
    starts_ = std::move(layout.starts);
    documents_ = static_cast<int64_t>(starts_.size());
    version_ = 0;
    protocol_ = {FirstToken::kGiven, -1};
    // No vocabulary in the file: the largest id decides, read once now (a bad
    // id is refused here, not when the sampler first meets it).
    vocab_ = int64_t{1} << 62;
    int64_t largest = -1;
    std::vector<int64_t> buffer(1 << 16);
    for (int64_t at = 0; at < count_; at += static_cast<int64_t>(buffer.size())) {
      const int64_t n = std::min<int64_t>(buffer.size(), count_ - at);
      read(at, n, buffer.data());
      for (int64_t i = 0; i < n; ++i) {
        if (buffer[i] < 0 || buffer[i] >= (int64_t{1} << 31))
          fail(path_, ": token ", buffer[i], " at position ", at + i, " is not a token id");
        largest = std::max(largest, buffer[i]);
      }
    }
    vocab_ = largest + 1;
  } catch (...) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
    map_ = nullptr;
    throw;
  }
}

int64_t TokenShard::document_start(int64_t d) const {
  if (!indexed_) fail(path_, ": a ", format_ == "dha" ? "version-1" : format_.c_str(), " shard has no document index");
  if (d < 0 || d >= documents_) fail(path_, ": document ", d, " is outside the shard's ", documents_);
  if (format_ != "dha") return starts_[d];
  uint64_t start;
  std::memcpy(&start, map_ + kShardHeaderBytes + count_ * width_ + 8 * d, 8);
  return static_cast<int64_t>(start);
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

int64_t TokenShard::at(int64_t i) const {
  int64_t out;
  read(i, 1, &out);
  return out;
}

int64_t TokenShard::read_foreign_token(const uint8_t* p) const {
  switch (width_ * (is_signed_ ? -1 : 1)) {
    case 1: return *p;
    case -1: return static_cast<int8_t>(*p);
    case -2: { int16_t t; std::memcpy(&t, p, 2); return t; }
    case -4: { int32_t t; std::memcpy(&t, p, 4); return t; }
    default: { int64_t t; std::memcpy(&t, p, 8); return t; }
  }
}

void TokenShard::read(int64_t begin, int64_t n, int64_t* out) const {
  if (begin < 0 || n < 0 || begin + n > count_)
    fail(path_, ": read of tokens [", begin, ", ", begin + n, ") beyond ", count_);
  const uint8_t* p = map_ + data_offset_ + begin * width_;
  for (int64_t i = 0; i < n; ++i) {
    if (width_ == 2 && !is_signed_) {
      uint16_t t;
      std::memcpy(&t, p + 2 * i, 2);
      out[i] = t;
    } else if (width_ == 4 && !is_signed_) {
      uint32_t t;
      std::memcpy(&t, p + 4 * i, 4);
      out[i] = t;
    } else {
      out[i] = read_foreign_token(p + width_ * i);
    }
    if (out[i] >= vocab_)
      fail(path_, ": token ", out[i], " at position ", begin + i, " is outside the shard's vocab of ", vocab_);
  }
}

std::vector<std::string> TokenDataset::shard_paths(const std::string& dir, const std::string& split) {
  std::vector<std::string> paths;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(split + "-", 0) == 0 && entry.path().extension() == ".tok") paths.push_back(entry.path().string());
  }
  std::sort(paths.begin(), paths.end());
  return paths.empty() ? foreign_shard_paths(dir, split) : paths;
}

TokenDataset::TokenDataset(const std::string& dir, const std::string& split) : dir_(dir) {
  if (!fs::is_directory(dir)) fail(dir, ": not a directory (expected the output of dha-tokenize)");
  const std::vector<std::string> paths = shard_paths(dir, split);
  if (paths.empty())
    fail(dir, ": no ", split, "-*.tok shards (make them with dha-tokenize), nor llm.c or Megatron-LM .bin files",
         split == "heldout" ? " held out (llm.c: named *val*)" : "");
  for (const auto& path : paths) {
    auto shard = std::make_unique<TokenShard>(path);
    if (!shards_.empty() && shard->format() != format_)
      fail(path, ": a ", shard->format(), " shard among ", format_, " shards (one format per directory)");
    format_ = shard->format();
    if (format_ != "dha") {
      vocab_ = std::max(vocab_, shard->vocab_size());  // their largest id + 1
    } else {
      if (vocab_ && shard->vocab_size() != vocab_)
        fail(path, ": vocab ", shard->vocab_size(), " differs from the other shards' ", vocab_);
      vocab_ = shard->vocab_size();
    }
    if (!shards_.empty() && (shard->version() != version_ || !same_protocol(shard->protocol(), protocol_)))
      fail(path, ": version ", shard->version(), " shard whose documents begin with ", describe(shard->protocol()),
           ", but the other shards are version ", version_, " with ", describe(protocol_), " (tokenize again)");
    version_ = shard->version();
    indexed_ = shard->indexed();
    protocol_ = shard->protocol();
    offsets_.push_back(total_);
    total_ += shard->size();
    shards_.push_back(std::move(shard));
  }
  if (total_ == 0) fail(dir, ": the ", split, " shards hold no tokens");
}

TokenDataset::TokenDataset(std::vector<int32_t> tokens, int64_t vocab_size, std::string name)
    : dir_(std::move(name)), memory_(std::move(tokens)) {
  total_ = static_cast<int64_t>(memory_.size());
  vocab_ = vocab_size;
  if (total_ == 0) fail(dir_, ": no tokens");
  for (int32_t t : memory_)
    if (t < 0 || t >= vocab_size) fail(dir_, ": token ", t, " is outside the vocab of ", vocab_size);
}

void TokenDataset::read(int64_t begin, int64_t n, int64_t* out) const {
  if (begin < 0 || begin + n > total_) fail(dir_, ": read beyond the end of the data");
  if (shards_.empty()) {
    std::copy(memory_.begin() + begin, memory_.begin() + begin + n, out);
    return;
  }
  size_t s = std::upper_bound(offsets_.begin(), offsets_.end(), begin) - offsets_.begin() - 1;
  while (n > 0) {
    const int64_t local = begin - offsets_[s];
    const int64_t take = std::min(n, shards_[s]->size() - local);
    shards_[s]->read(local, take, out);
    out += take, begin += take, n -= take, ++s;
  }
}

std::vector<std::vector<int32_t>> TokenDataset::documents(int32_t bos_id, int64_t max_docs) const {
  std::vector<std::vector<int32_t>> docs;
  if (indexed_) {
    std::vector<int64_t> buffer;
    for (size_t s = 0; s < shards_.size(); ++s) {
      const TokenShard& shard = *shards_[s];
      for (int64_t d = 0; d < shard.documents(); ++d) {
        if (max_docs > 0 && static_cast<int64_t>(docs.size()) == max_docs) return docs;
        const int64_t begin = shard.document_start(d);
        const int64_t end = d + 1 < shard.documents() ? shard.document_start(d + 1) : shard.size();
        buffer.resize(end - begin);
        shard.read(begin, end - begin, buffer.data());
        docs.emplace_back(buffer.begin(), buffer.end());
      }
    }
    return docs;
  }
  std::vector<int64_t> buffer(1 << 16);
  for (int64_t pos = 0; pos < total_; pos += static_cast<int64_t>(buffer.size())) {
    const int64_t n = std::min<int64_t>(buffer.size(), total_ - pos);
    read(pos, n, buffer.data());
    for (int64_t i = 0; i < n; ++i) {
      if (buffer[i] == bos_id || docs.empty()) {
        if (max_docs > 0 && static_cast<int64_t>(docs.size()) == max_docs) return docs;
        docs.emplace_back();
      }
      docs.back().push_back(static_cast<int32_t>(buffer[i]));
    }
  }
  return docs;
}

std::string TokenDataset::fingerprint() const {
  std::string out = "tokens=" + std::to_string(total_) + ";vocab=" + std::to_string(vocab_);
  for (const auto& shard : shards_) out += ";" + fs::path(shard->path()).filename().string();
  return out;
}

namespace {

int64_t sequences_of(const TokenDataset& data, int64_t seq_len) {
  if (seq_len <= 0) fail("sequence length must be positive");
  const int64_t n = (data.size() - 1) / seq_len;
  if (n < 1)
    fail(data.dir(), ": ", data.size(), " tokens are shorter than one sequence of ", seq_len,
         " (+1) tokens; use more data or a shorter --seq-len");
  return n;
}

// Each source's sequences per period: weight shares of kMixturePeriod, rounded by largest remainder.
std::vector<int64_t> period_shares(const std::vector<MixtureSource>& sources) {
  double total = 0.0;
  for (const auto& s : sources) {
    if (!(s.weight > 0.0) || !std::isfinite(s.weight))
      fail(s.data->dir(), ": mixture weight ", s.weight, " must be a positive number");
    total += s.weight;
  }
  std::vector<int64_t> shares(sources.size());
  std::vector<std::pair<double, size_t>> remainders;
  int64_t given = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    const double exact = sources[i].weight / total * static_cast<double>(kMixturePeriod);
    shares[i] = static_cast<int64_t>(std::floor(exact));
    given += shares[i];
    remainders.push_back({exact - std::floor(exact), i});
  }
  std::stable_sort(remainders.begin(), remainders.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (int64_t k = 0; given < kMixturePeriod; ++k, ++given) shares[remainders[k].second] += 1;
  for (size_t i = 0; i < sources.size(); ++i)
    if (shares[i] == 0)
      fail(sources[i].data->dir(), ": mixture weight ", sources[i].weight, " is below one sequence in ",
           kMixturePeriod, " of the mixture; raise it or leave the source out");
  return shares;
}

}  // namespace

SequenceSampler::SequenceSampler(const TokenDataset& data, int64_t seq_len, uint64_t seed)
    : seq_len_(seq_len), n_sequences_(sequences_of(data, seq_len)) {
  sources_.emplace_back(&data, n_sequences_, seed, n_sequences_);
}

SequenceSampler::SequenceSampler(const std::vector<MixtureSource>& sources, int64_t seq_len, uint64_t seed)
    : seq_len_(seq_len), n_sequences_(0) {
  if (sources.empty()) fail("a mixture needs at least one source");
  if (sources.size() == 1) {
    n_sequences_ = sequences_of(*sources[0].data, seq_len);
    sources_.emplace_back(sources[0].data, n_sequences_, seed, n_sequences_);
    return;
  }
  const std::vector<int64_t> shares = period_shares(sources);
  for (size_t i = 0; i < sources.size(); ++i)
    sources_.emplace_back(sources[i].data, sequences_of(*sources[i].data, seq_len),
                          seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i), shares[i]);
  // Smooth weighted round robin: each source as evenly spread over the period as its share allows.
  n_sequences_ = kMixturePeriod;
  pattern_.resize(kMixturePeriod);
  rank_.resize(kMixturePeriod);
  std::vector<int64_t> credit(sources.size(), 0), taken(sources.size(), 0);
  for (int64_t j = 0; j < kMixturePeriod; ++j) {
    size_t best = 0;
    for (size_t i = 0; i < sources.size(); ++i) {
      credit[i] += shares[i];
      if (credit[i] > credit[best]) best = i;
    }
    credit[best] -= kMixturePeriod;
    pattern_[j] = static_cast<int32_t>(best);
    rank_[j] = taken[best]++;
  }
}

const std::vector<int64_t>& SequenceSampler::order(Source& source, int64_t epoch) {
  if (epoch != source.cached_epoch) {
    // Own Fisher-Yates on mt19937_64 so the order does not depend on the
    // standard library's distribution implementations.
    source.order.resize(source.n_sequences);
    for (int64_t i = 0; i < source.n_sequences; ++i) source.order[i] = i;
    std::mt19937_64 rng(source.seed * 1000003ull + static_cast<uint64_t>(epoch));
    for (int64_t i = source.n_sequences - 1; i > 0; --i) {
      const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
      std::swap(source.order[i], source.order[j]);
    }
    source.cached_epoch = epoch;
  }
  return source.order;
}

DataCursor SequenceSampler::advance(DataCursor cursor, int64_t count) const {
  const int64_t flat = cursor.index + count;
  cursor.epoch += flat / n_sequences_;
  cursor.index = flat % n_sequences_;
  return cursor;
}

std::vector<SourcePosition> SequenceSampler::positions(const DataCursor& cursor) const {
  std::vector<SourcePosition> out(sources_.size());
  for (size_t s = 0; s < sources_.size(); ++s) out[s].sequences = cursor.epoch * sources_[s].share;
  if (pattern_.empty())
    out[0].sequences += cursor.index;
  else
    for (int64_t j = 0; j < cursor.index; ++j) out[pattern_[j]].sequences += 1;
  for (size_t s = 0; s < sources_.size(); ++s) {
    out[s].epoch = out[s].sequences / sources_[s].n_sequences;
    out[s].index = out[s].sequences % sources_[s].n_sequences;
  }
  return out;
}

torch::Tensor SequenceSampler::batch(const DataCursor& cursor, int64_t offset, int64_t count) {
  torch::Tensor out = torch::empty({count, seq_len_ + 1}, torch::kInt64);
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const DataCursor at = advance(cursor, offset + i);
    const size_t s = pattern_.empty() ? 0 : static_cast<size_t>(pattern_[at.index]);
    Source& source = sources_[s];
    // The source's own position: its sequences before this one.
    const int64_t t = pattern_.empty() ? at.epoch * n_sequences_ + at.index : at.epoch * source.share + rank_[at.index];
    const int64_t sequence = order(source, t / source.n_sequences)[t % source.n_sequences];
    source.data->read(sequence * seq_len_, seq_len_ + 1, dst + i * (seq_len_ + 1));
  }
  return out;
}

}  // namespace dha
