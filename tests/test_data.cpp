// Token shards and the sequence sampler: round trips, bad input, deterministic order.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>

#include "dha/data.h"
#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "test_util.h"

using dha::test::expect_error_containing;
using dha::test::expect_one_line_error;

namespace {

bool fs_exists(const std::string& path) { return std::filesystem::exists(path); }

const dha::DocumentProtocol kBos1{dha::FirstToken::kBos, 1};

// Starts of documents that each begin with `first` (a test stream's BOS).
std::vector<int64_t> starts_of(const std::vector<int32_t>& tokens, int32_t first) {
  std::vector<int64_t> starts;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] == first) starts.push_back(static_cast<int64_t>(i));
  return starts;
}

// A version-1 shard as dha-tokenize wrote it before the document index, byte
// by byte from the old format's description (not through the writer).
std::string v1_shard_bytes(const std::vector<int32_t>& tokens, uint64_t vocab, uint64_t documents) {
  std::string b("DHATOK\0\0", 8);
  const auto u32 = [&](uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  const auto u64 = [&](uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); };
  u32(1), u32(2), u64(vocab), u64(tokens.size()), u64(documents);
  b.append(24, '\0');
  for (int32_t t : tokens) {
    const uint16_t v = static_cast<uint16_t>(t);
    b.append(reinterpret_cast<const char*>(&v), 2);
  }
  return b;
}

// A dataset directory with one train shard whose token at position i is i + 2.
std::string make_dataset(const dha::test::TempDir& tmp, int64_t n_tokens) {
  std::vector<int32_t> tokens(n_tokens);
  for (int64_t i = 0; i < n_tokens; ++i) tokens[i] = static_cast<int32_t>(i + 2);
  dha::write_token_shard(tmp.file("train-00000.tok"), tokens, n_tokens + 2, {0}, {dha::FirstToken::kGiven, -1});
  return tmp.path();
}

}  // namespace

TEST(TokenShard, RoundTripsUint16AndUint32) {
  dha::test::TempDir tmp;
  for (int64_t vocab : {512, 70000}) {
    const std::vector<int32_t> tokens = {1, 5, static_cast<int32_t>(vocab - 1), 0, 1, 7};
    dha::write_token_shard(tmp.file("s.tok"), tokens, vocab, {0, 4}, kBos1);
    const dha::TokenShard shard(tmp.file("s.tok"));
    EXPECT_EQ(shard.bytes_per_token(), vocab <= 65536 ? 2 : 4);
    EXPECT_EQ(shard.size(), 6);
    EXPECT_EQ(shard.vocab_size(), vocab);
    EXPECT_EQ(shard.documents(), 2);
    EXPECT_EQ(shard.version(), dha::kShardVersion);
    EXPECT_EQ(shard.protocol().first_token, dha::FirstToken::kBos);
    EXPECT_EQ(shard.protocol().token_id, 1);
    EXPECT_EQ(shard.document_start(1), 4);
    std::vector<int64_t> back(6);
    shard.read(0, 6, back.data());
    EXPECT_EQ(std::vector<int64_t>(tokens.begin(), tokens.end()), back);
  }
}

TEST(TokenShard, WriterRejectsOutOfVocabTokens) {
  dha::test::TempDir tmp;
  expect_error_containing([&] { dha::write_token_shard(tmp.file("s.tok"), {1, 600}, 512, {0}, kBos1); },
                          "token 600 at position 1 is outside the vocab of 512");
}

TEST(TokenShardBadInput, BadMagic) {
  dha::test::TempDir tmp;
  dha::io::write_file_atomic(tmp.file("s.tok"), std::string(80, 'x'));
  expect_error_containing([&] { dha::TokenShard s(tmp.file("s.tok")); }, "bad magic");
}

TEST(TokenShardBadInput, TruncatedTokens) {
  dha::test::TempDir tmp;
  dha::write_token_shard(tmp.file("s.tok"), std::vector<int32_t>(100, 3), 512, {0}, {dha::FirstToken::kGiven, -1});
  const std::string bytes = dha::io::read_file(tmp.file("s.tok"));
  dha::io::write_file_atomic(tmp.file("s.tok"), bytes.substr(0, bytes.size() - 11));
  expect_error_containing([&] { dha::TokenShard s(tmp.file("s.tok")); }, "(truncated?)");
}

TEST(TokenShardBadInput, UnknownVersionAndShortFile) {
  dha::test::TempDir tmp;
  dha::write_token_shard(tmp.file("s.tok"), {1, 2, 3}, 512, {0}, kBos1);
  std::string bytes = dha::io::read_file(tmp.file("s.tok"));
  const uint32_t version = 9;
  std::memcpy(bytes.data() + 8, &version, 4);
  dha::io::write_file_atomic(tmp.file("s.tok"), bytes);
  expect_error_containing([&] { dha::TokenShard s(tmp.file("s.tok")); }, "version 9 is not supported");
  dha::io::write_file_atomic(tmp.file("short.tok"), "DHATOK");
  expect_error_containing([&] { dha::TokenShard s(tmp.file("short.tok")); }, "shorter than the 64-byte");
}

TEST(TokenDataset, EmptyDirectoryAndEmptyShardsAreErrors) {
  dha::test::TempDir tmp;
  expect_error_containing([&] { dha::TokenDataset d(tmp.path(), "train"); }, "no train-*.tok shards");
  dha::write_token_shard(tmp.file("train-00000.tok"), {}, 512, {}, kBos1);
  expect_error_containing([&] { dha::TokenDataset d(tmp.path(), "train"); }, "hold no tokens");
}

TEST(TokenDataset, DocumentsSplitAtBos) {
  dha::test::TempDir tmp;
  const std::vector<int32_t> tokens = {1, 4, 5, 1, 6, 1, 7, 8, 9};
  dha::write_token_shard(tmp.file("heldout-00000.tok"), tokens, 512, starts_of(tokens, 1), kBos1);
  const dha::TokenDataset data(tmp.path(), "heldout");
  const auto docs = data.documents(1, 0);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[2], (std::vector<int32_t>{1, 7, 8, 9}));
  EXPECT_EQ(data.documents(1, 2).size(), 2u);
}

TEST(SequenceSampler, DeterministicOrderCoveringEveryPackedSequence) {
  dha::test::TempDir tmp;
  const dha::TokenDataset data(make_dataset(tmp, 1001), "train");
  dha::SequenceSampler a(data, 10, 7), b(data, 10, 7), other_seed(data, 10, 8);
  EXPECT_EQ(a.sequences_per_epoch(), 100);
  const dha::DataCursor start;
  const torch::Tensor epoch = a.batch(start, 0, 100);
  EXPECT_TRUE(torch::equal(epoch, b.batch(start, 0, 100)));
  EXPECT_FALSE(torch::equal(epoch, other_seed.batch(start, 0, 100)));
  // Every packed sequence exactly once per epoch, 11 consecutive stream tokens each
  // (inputs and the targets shifted by one).
  std::vector<bool> seen(100, false);
  for (int64_t i = 0; i < 100; ++i) {
    const int64_t position = epoch[i][0].item<int64_t>() - 2;
    ASSERT_EQ(position % 10, 0);
    EXPECT_FALSE(seen[position / 10]);
    seen[position / 10] = true;
    EXPECT_TRUE(torch::equal(epoch[i], torch::arange(position + 2, position + 13)));
  }
  // Reading with an offset equals reading the same span from an advanced cursor.
  const dha::DataCursor later = a.advance(start, 95);
  EXPECT_TRUE(torch::equal(a.batch(start, 95, 10), a.batch(later, 0, 10)));
  EXPECT_EQ(later.epoch, 0);
  EXPECT_EQ(a.advance(start, 250).epoch, 2);
  EXPECT_EQ(a.advance(start, 250).index, 50);
}

TEST(SequenceSampler, DataShorterThanOneSequenceIsAnError) {
  dha::test::TempDir tmp;
  const dha::TokenDataset data(make_dataset(tmp, 20), "train");
  expect_error_containing([&] { dha::SequenceSampler s(data, 32, 1); }, "shorter than one sequence of 32");
}

TEST(TokenShard, Version2RoundTripsProtocolAndIndex) {
  dha::test::TempDir tmp;
  const std::vector<int32_t> tokens = {0, 5, 6, 7, 0, 8, 0, 9, 9};
  const std::vector<int64_t> starts = {0, 4, 6};
  for (int64_t vocab : {512, 70000}) {
    dha::write_token_shard(tmp.file("s.tok"), tokens, vocab, starts, {dha::FirstToken::kSeparator, 0});
    const std::string bytes = dha::io::read_file(tmp.file("s.tok"));
    const int64_t width = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(static_cast<int64_t>(bytes.size()), dha::kShardHeaderBytes + 9 * width + 3 * 8);
    // The header fields at their documented offsets.
    uint32_t version, code;
    int32_t id;
    std::memcpy(&version, bytes.data() + 8, 4);
    std::memcpy(&code, bytes.data() + 40, 4);
    std::memcpy(&id, bytes.data() + 44, 4);
    EXPECT_EQ(version, 2u);
    EXPECT_EQ(code, 1u);  // separator
    EXPECT_EQ(id, 0);
    const dha::TokenShard shard(tmp.file("s.tok"));
    EXPECT_EQ(shard.version(), 2u);
    EXPECT_EQ(shard.protocol().first_token, dha::FirstToken::kSeparator);
    EXPECT_EQ(shard.protocol().token_id, 0);
    ASSERT_EQ(shard.documents(), 3);
    for (int64_t d = 0; d < 3; ++d) EXPECT_EQ(shard.document_start(d), starts[d]);
    std::vector<int64_t> back(9);
    shard.read(0, 9, back.data());
    EXPECT_EQ(std::vector<int64_t>(tokens.begin(), tokens.end()), back);
  }
}

TEST(TokenDataset, DocumentsFollowTheIndexAcrossShards) {
  dha::test::TempDir tmp;
  const dha::DocumentProtocol separator{dha::FirstToken::kSeparator, 0};
  // The second document holds its own first token (a literal "<|endoftext|>"
  // in its text): splitting at that token would cut it in two.
  dha::write_token_shard(tmp.file("heldout-00000.tok"), {0, 4, 5, 0, 6, 0, 7}, 512, {0, 3}, separator);
  dha::write_token_shard(tmp.file("heldout-00001.tok"), {0, 8, 0, 9, 10}, 512, {0, 2}, separator);
  const dha::TokenDataset data(tmp.path(), "heldout");
  EXPECT_EQ(data.version(), 2u);
  EXPECT_EQ(data.protocol().first_token, dha::FirstToken::kSeparator);
  const auto docs = data.documents(/*bos_id=*/0, 0);
  const std::vector<std::vector<int32_t>> expected = {{0, 4, 5}, {0, 6, 0, 7}, {0, 8}, {0, 9, 10}};
  EXPECT_EQ(docs, expected);
  EXPECT_EQ(data.documents(0, 3).size(), 3u);
  // Documents with no leading token ("given") have no token to split at at all.
  dha::test::TempDir given;
  dha::write_token_shard(given.file("heldout-00000.tok"), {4, 5, 6, 7, 8}, 512, {0, 2, 3}, {dha::FirstToken::kGiven, -1});
  const auto plain = dha::TokenDataset(given.path(), "heldout").documents(1, 0);
  EXPECT_EQ(plain, (std::vector<std::vector<int32_t>>{{4, 5}, {6}, {7, 8}}));
}

TEST(TokenDataset, Version1ShardsAreStillReadAndSplitAtBos) {
  dha::test::TempDir tmp;
  const std::vector<int32_t> tokens = {1, 4, 5, 1, 6, 1, 7, 8, 9, 1, 3};
  dha::io::write_file_atomic(tmp.file("heldout-00000.tok"), v1_shard_bytes(tokens, 512, 4));
  const dha::TokenShard shard(tmp.file("heldout-00000.tok"));
  EXPECT_EQ(shard.version(), 1u);
  EXPECT_EQ(shard.protocol().first_token, dha::FirstToken::kBos);
  EXPECT_EQ(shard.documents(), 4);
  const dha::TokenDataset data(tmp.path(), "heldout");
  EXPECT_EQ(data.version(), 1u);
  EXPECT_EQ(data.size(), 11);
  const auto docs = data.documents(1, 0);
  EXPECT_EQ(docs, (std::vector<std::vector<int32_t>>{{1, 4, 5}, {1, 6}, {1, 7, 8, 9}, {1, 3}}));
  // The sampler reads a version-1 stream as before.
  dha::io::write_file_atomic(tmp.file("train-00000.tok"), v1_shard_bytes(tokens, 512, 4));
  const dha::TokenDataset train(tmp.path(), "train");
  dha::SequenceSampler sampler(train, 5, 3);
  const torch::Tensor batch = sampler.batch({}, 0, 2);
  std::vector<int64_t> all(tokens.begin(), tokens.end());
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t start = batch[i][0].item<int64_t>() == 1 && batch[i][1].item<int64_t>() == 4 ? 0 : 5;
    EXPECT_TRUE(torch::equal(batch[i], torch::tensor(std::vector<int64_t>(all.begin() + start, all.begin() + start + 6))));
  }
  // A split may not mix versions: version-1 documents have no index to follow.
  dha::write_token_shard(tmp.file("heldout-00001.tok"), {1, 2}, 512, {0}, kBos1);
  expect_one_line_error([&] { dha::TokenDataset d(tmp.path(), "heldout"); }, {"heldout-00001.tok", "version 2", "version 1"});
}

TEST(TokenShardBadInput, WriterRefusesAnIndexThatDoesNotDescribeTheTokens) {
  dha::test::TempDir tmp;
  const std::string path = tmp.file("s.tok");
  expect_one_line_error([&] { dha::write_token_shard(path, {1, 2, 1}, 512, {1, 2}, kBos1); }, "document 0 starts at 1");
  expect_one_line_error([&] { dha::write_token_shard(path, {1, 2, 1}, 512, {0, 0}, kBos1); }, "document 1 starts at 0");
  expect_one_line_error([&] { dha::write_token_shard(path, {1, 2, 1}, 512, {0, 3}, kBos1); }, "document 1 starts at 3");
  expect_one_line_error([&] { dha::write_token_shard(path, {1, 2, 1}, 512, {0, 1}, kBos1); },
                        "document 1 begins with token 2, not the bos id 1");
  expect_one_line_error([&] { dha::write_token_shard(path, {1, 2}, 512, {}, kBos1); }, "no document starts");
  expect_one_line_error([&] { dha::write_token_shard(path, {1, 2}, 512, {0}, {dha::FirstToken::kGiven, 1}); },
                        "need no token id");
  EXPECT_FALSE(fs_exists(path));
}

TEST(TokenShardBadInput, ReaderRefusesACorruptIndexOrHeader) {
  dha::test::TempDir tmp;
  dha::write_token_shard(tmp.file("s.tok"), {1, 2, 1, 3}, 512, {0, 2}, kBos1);
  const std::string good = dha::io::read_file(tmp.file("s.tok"));
  const size_t index = dha::kShardHeaderBytes + 4 * 2;
  const auto with = [&](size_t offset, const void* value, size_t n) {
    std::string bytes = good;
    std::memcpy(bytes.data() + offset, value, n);
    dha::io::write_file_atomic(tmp.file("bad.tok"), bytes);
    return tmp.file("bad.tok");
  };
  const uint64_t off_token = 1, past_end = 4;
  const uint32_t bad_code = 7;
  const int32_t other_id = 3;
  expect_one_line_error([&] { dha::TokenShard s(with(index + 8, &off_token, 8)); },
                        {"bad.tok", "document 1 begins with token 2, not the header's bos (id 1)"});
  expect_one_line_error([&] { dha::TokenShard s(with(index + 8, &past_end, 8)); }, {"bad.tok", "index entry 1 is 4"});
  expect_one_line_error([&] { dha::TokenShard s(with(40, &bad_code, 4)); }, {"bad.tok", "first-token code 7"});
  expect_one_line_error([&] { dha::TokenShard s(with(44, &other_id, 4)); },
                        {"bad.tok", "document 0 begins with token 1, not the header's bos (id 3)"});
  // The index is part of the size check: one entry missing is a truncated file.
  dha::io::write_file_atomic(tmp.file("bad.tok"), good.substr(0, good.size() - 8));
  expect_one_line_error([&] { dha::TokenShard s(tmp.file("bad.tok")); }, {"bad.tok", "2 documents", "(truncated?)"});
  // Shards of one split must begin their documents alike.
  dha::test::TempDir mixed;
  dha::write_token_shard(mixed.file("train-00000.tok"), {1, 2}, 512, {0}, kBos1);
  dha::write_token_shard(mixed.file("train-00001.tok"), {0, 2}, 512, {0}, {dha::FirstToken::kSeparator, 0});
  expect_one_line_error([&] { dha::TokenDataset d(mixed.path(), "train"); },
                        {"train-00001.tok", "separator (id 0)", "bos (id 1)"});
}
