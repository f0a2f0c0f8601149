// Token shards (memory-mapped, header-checked) and the resumable sequence sampler.
#include "dha/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include "dha/error.h"
#include "dha/io/atomic_file.h"

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
  uint8_t reserved[24];
};
static_assert(sizeof(RawHeader) == kShardHeaderBytes, "shard header is 64 bytes");

}  // namespace

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size,
                       int64_t documents) {
  RawHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kShardVersion;
  h.width = vocab_size <= 65536 ? 2 : 4;
  h.vocab = static_cast<uint64_t>(vocab_size);
  h.count = tokens.size();
  h.documents = static_cast<uint64_t>(documents);
  std::string bytes(reinterpret_cast<const char*>(&h), sizeof(h));
  bytes.resize(sizeof(h) + tokens.size() * h.width);
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
  if (map_size_ < static_cast<size_t>(kShardHeaderBytes)) {
    ::close(fd);
    fail(path, ": ", map_size_, " bytes, shorter than the 64-byte token shard header");
  }
  void* map = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) fail(path, ": mmap failed (", std::strerror(errno), ")");
  map_ = static_cast<const uint8_t*>(map);
  RawHeader h;
  std::memcpy(&h, map_, sizeof(h));
  try {
    if (std::memcmp(h.magic, kMagic, 8) != 0)
      fail(path, ": not a dha token shard (bad magic; make shards with dha-tokenize)");
    if (h.version != kShardVersion)
      fail(path, ": token shard version ", h.version, " is not supported (expected ", kShardVersion, ")");
    if (h.width != 2 && h.width != 4)
      fail(path, ": token width ", h.width, " bytes is invalid (expected 2 or 4)");
    if (h.vocab == 0 || h.vocab > (1ull << 31)) fail(path, ": vocab size ", h.vocab, " is invalid");
    if (h.width == 2 && h.vocab > 65536) fail(path, ": vocab ", h.vocab, " does not fit uint16 tokens");
    const uint64_t data_bytes = map_size_ - kShardHeaderBytes;
    if (h.count > data_bytes / h.width || h.count * h.width != data_bytes)
      fail(path, ": header says ", h.count, " tokens (", h.count * h.width, " bytes) but the file holds ",
           data_bytes, " bytes of tokens", h.count * h.width > data_bytes ? " (truncated?)" : "");
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), map_size_);
    map_ = nullptr;
    throw;
  }
  width_ = h.width;
  count_ = static_cast<int64_t>(h.count);
  vocab_ = static_cast<int64_t>(h.vocab);
  documents_ = static_cast<int64_t>(h.documents);
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

int64_t TokenShard::at(int64_t i) const {
  int64_t out;
  read(i, 1, &out);
  return out;
}

void TokenShard::read(int64_t begin, int64_t n, int64_t* out) const {
  if (begin < 0 || n < 0 || begin + n > count_)
    fail(path_, ": read of tokens [", begin, ", ", begin + n, ") beyond ", count_);
  const uint8_t* p = map_ + kShardHeaderBytes + begin * width_;
  for (int64_t i = 0; i < n; ++i) {
    if (width_ == 2) {
      uint16_t t;
      std::memcpy(&t, p + 2 * i, 2);
      out[i] = t;
    } else {
      uint32_t t;
      std::memcpy(&t, p + 4 * i, 4);
      out[i] = t;
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
  return paths;
}

TokenDataset::TokenDataset(const std::string& dir, const std::string& split) : dir_(dir) {
  if (!fs::is_directory(dir)) fail(dir, ": not a directory (expected the output of dha-tokenize)");
  const std::vector<std::string> paths = shard_paths(dir, split);
  if (paths.empty()) fail(dir, ": no ", split, "-*.tok shards (make them with dha-tokenize)");
  for (const auto& path : paths) {
    auto shard = std::make_unique<TokenShard>(path);
    if (vocab_ && shard->vocab_size() != vocab_)
      fail(path, ": vocab ", shard->vocab_size(), " differs from the other shards' ", vocab_);
    vocab_ = shard->vocab_size();
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

SequenceSampler::SequenceSampler(const TokenDataset& data, int64_t seq_len, uint64_t seed)
    : data_(data), seq_len_(seq_len), n_sequences_((data.size() - 1) / seq_len), seed_(seed) {
  if (seq_len <= 0) fail("sequence length must be positive");
  if (n_sequences_ < 1)
    fail(data.dir(), ": ", data.size(), " tokens are shorter than one sequence of ", seq_len,
         " (+1) tokens; use more data or a shorter --seq-len");
}

const std::vector<int64_t>& SequenceSampler::order(int64_t epoch) {
  if (epoch != cached_epoch_) {
    // Own Fisher-Yates on mt19937_64 so the order does not depend on the
    // standard library's distribution implementations.
    order_.resize(n_sequences_);
    for (int64_t i = 0; i < n_sequences_; ++i) order_[i] = i;
    std::mt19937_64 rng(seed_ * 1000003ull + static_cast<uint64_t>(epoch));
    for (int64_t i = n_sequences_ - 1; i > 0; --i) {
      const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
      std::swap(order_[i], order_[j]);
    }
    cached_epoch_ = epoch;
  }
  return order_;
}

DataCursor SequenceSampler::advance(DataCursor cursor, int64_t count) const {
  const int64_t flat = cursor.index + count;
  cursor.epoch += flat / n_sequences_;
  cursor.index = flat % n_sequences_;
  return cursor;
}

torch::Tensor SequenceSampler::batch(const DataCursor& cursor, int64_t offset, int64_t count) {
  torch::Tensor out = torch::empty({count, seq_len_ + 1}, torch::kInt64);
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const DataCursor at = advance(cursor, offset + i);
    const int64_t sequence = order(at.epoch)[at.index];
    data_.read(sequence * seq_len_, seq_len_ + 1, dst + i * (seq_len_ + 1));
  }
  return out;
}

}  // namespace dha
