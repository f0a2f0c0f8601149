// Token shards and the sequence sampler: round trips, bad input, deterministic order.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

#include "dha/data.h"
#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "test_util.h"

using dha::test::expect_error_containing;

namespace {

// A dataset directory with one train shard whose token at position i is i + 2.
std::string make_dataset(const dha::test::TempDir& tmp, int64_t n_tokens) {
  std::vector<int32_t> tokens(n_tokens);
  for (int64_t i = 0; i < n_tokens; ++i) tokens[i] = static_cast<int32_t>(i + 2);
  dha::write_token_shard(tmp.file("train-00000.tok"), tokens, n_tokens + 2, 1);
  return tmp.path();
}

}  // namespace

TEST(TokenShard, RoundTripsUint16AndUint32) {
  dha::test::TempDir tmp;
  for (int64_t vocab : {512, 70000}) {
    const std::vector<int32_t> tokens = {1, 5, static_cast<int32_t>(vocab - 1), 0, 1, 7};
    dha::write_token_shard(tmp.file("s.tok"), tokens, vocab, 2);
    const dha::TokenShard shard(tmp.file("s.tok"));
    EXPECT_EQ(shard.bytes_per_token(), vocab <= 65536 ? 2 : 4);
    EXPECT_EQ(shard.size(), 6);
    EXPECT_EQ(shard.vocab_size(), vocab);
    EXPECT_EQ(shard.documents(), 2);
    std::vector<int64_t> back(6);
    shard.read(0, 6, back.data());
    EXPECT_EQ(std::vector<int64_t>(tokens.begin(), tokens.end()), back);
  }
}

TEST(TokenShard, WriterRejectsOutOfVocabTokens) {
  dha::test::TempDir tmp;
  expect_error_containing([&] { dha::write_token_shard(tmp.file("s.tok"), {1, 600}, 512, 1); },
                          "token 600 at position 1 is outside the vocab of 512");
}

TEST(TokenShardBadInput, BadMagic) {
  dha::test::TempDir tmp;
  dha::io::write_file_atomic(tmp.file("s.tok"), std::string(80, 'x'));
  expect_error_containing([&] { dha::TokenShard s(tmp.file("s.tok")); }, "bad magic");
}

TEST(TokenShardBadInput, TruncatedTokens) {
  dha::test::TempDir tmp;
  dha::write_token_shard(tmp.file("s.tok"), std::vector<int32_t>(100, 3), 512, 1);
  const std::string bytes = dha::io::read_file(tmp.file("s.tok"));
  dha::io::write_file_atomic(tmp.file("s.tok"), bytes.substr(0, bytes.size() - 11));
  expect_error_containing([&] { dha::TokenShard s(tmp.file("s.tok")); }, "(truncated?)");
}

TEST(TokenShardBadInput, UnknownVersionAndShortFile) {
  dha::test::TempDir tmp;
  dha::write_token_shard(tmp.file("s.tok"), {1, 2, 3}, 512, 1);
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
  dha::write_token_shard(tmp.file("train-00000.tok"), {}, 512, 0);
  expect_error_containing([&] { dha::TokenDataset d(tmp.path(), "train"); }, "hold no tokens");
}

TEST(TokenDataset, DocumentsSplitAtBos) {
  dha::test::TempDir tmp;
  dha::write_token_shard(tmp.file("heldout-00000.tok"), {1, 4, 5, 1, 6, 1, 7, 8, 9}, 512, 3);
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
