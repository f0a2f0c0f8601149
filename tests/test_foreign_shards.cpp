// Pre-tokenized data of other tools read in place (dha/data.h,
// src/data/foreign_shards.h): llm.c / nanoGPT .bin shards, written here per
// llm.c's documented header (llm.c is not on PyPI), and Megatron-LM indexed
// datasets, written here per megatron-core's format and, when Python has
// megatron-core, by its own IndexedDatasetBuilder. Tokens, documents, the
// vocabulary found on open, the splits, and dha-train's checks before step 1.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "dha/data.h"
#include "dha/io/atomic_file.h"
#include "dha/io/hf_dir.h"
#include "model_fixtures.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::TempDir;

namespace {

template <typename T>
void append(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

// llm.c's dev/data/data_common.py write_datafile: 256 int32 (magic 20240520,
// version 1 = uint16 / 2 = uint32, token count), then the tokens.
void write_llmc(const std::string& path, const std::vector<int64_t>& tokens, int version) {
  std::string bytes;
  int32_t header[256] = {};
  header[0] = 20240520;
  header[1] = version;
  header[2] = static_cast<int32_t>(tokens.size());
  bytes.append(reinterpret_cast<const char*>(header), sizeof(header));
  for (int64_t t : tokens) {
    if (version == 1) append<uint16_t>(bytes, static_cast<uint16_t>(t));
    else append<uint32_t>(bytes, static_cast<uint32_t>(t));
  }
  dha::io::write_file_atomic(path, bytes);
}

// megatron.core.datasets.indexed_dataset: PREFIX.bin the tokens; PREFIX.idx
// "MMIDIDX\0\0", u64 1, u8 dtype code, u64 sequences, u64 document indices,
// i32 lengths, i64 byte pointers, i64 document indices (0 first). One sequence per document.
void write_megatron(const std::string& prefix, const std::vector<std::vector<int64_t>>& docs, bool uint16) {
  std::string bin, idx("MMIDIDX\0\0", 9);
  std::vector<int32_t> lengths;
  for (const auto& doc : docs) {
    for (int64_t t : doc) {
      if (uint16) append<uint16_t>(bin, static_cast<uint16_t>(t));
      else append<int32_t>(bin, static_cast<int32_t>(t));
    }
    lengths.push_back(static_cast<int32_t>(doc.size()));
  }
  append<uint64_t>(idx, 1);
  idx.push_back(static_cast<char>(uint16 ? 8 : 4));
  append<uint64_t>(idx, lengths.size());
  append<uint64_t>(idx, docs.size() + 1);
  for (int32_t n : lengths) append<int32_t>(idx, n);
  int64_t pointer = 0;
  for (int32_t n : lengths) {
    append<int64_t>(idx, pointer);
    pointer += n * (uint16 ? 2 : 4);
  }
  for (size_t d = 0; d <= docs.size(); ++d) append<int64_t>(idx, static_cast<int64_t>(d));
  dha::io::write_file_atomic(prefix + ".bin", bin);
  dha::io::write_file_atomic(prefix + ".idx", idx);
}

std::vector<std::vector<int64_t>> sample_docs(int n, int64_t vocab, int64_t doc_token) {
  std::vector<std::vector<int64_t>> docs;
  for (int d = 0; d < n; ++d) {
    std::vector<int64_t> doc = {doc_token};
    for (int i = 0; i < 3 + d % 5; ++i) doc.push_back(3 + (d * 7 + i * 13) % (vocab - 3));
    docs.push_back(doc);
  }
  return docs;
}

std::vector<int64_t> flat(const std::vector<std::vector<int64_t>>& docs) {
  std::vector<int64_t> out;
  for (const auto& d : docs) out.insert(out.end(), d.begin(), d.end());
  return out;
}

std::vector<std::vector<int32_t>> as_int32(const std::vector<std::vector<int64_t>>& docs) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& d : docs) out.emplace_back(d.begin(), d.end());
  return out;
}

bool python_has_megatron() { return dha::test::python_imports("megatron.core.datasets.indexed_dataset"); }

}  // namespace

TEST(LlmcShards, TokensDocumentsAndVocabularyOfBothVersions) {
  TempDir tmp;
  for (int version : {1, 2}) {
    const int64_t big = version == 1 ? 50257 : 128256;  // GPT-2's and Llama-3's vocabularies
    auto docs = sample_docs(20, 300, /*doc_token=*/big - 1);
    docs[3].push_back(big - 2);
    write_llmc(tmp.file("fineweb_train_000001.bin"), flat(docs), version);
    const dha::TokenShard shard(tmp.file("fineweb_train_000001.bin"));
    EXPECT_EQ(shard.format(), "llm.c");
    EXPECT_EQ(shard.size(), static_cast<int64_t>(flat(docs).size()));
    EXPECT_EQ(shard.vocab_size(), big);  // its largest id + 1
    EXPECT_EQ(shard.bytes_per_token(), version == 1 ? 2 : 4);
    EXPECT_FALSE(shard.indexed());
    const dha::TokenDataset data(tmp.path(), "train");
    EXPECT_EQ(data.format(), "llm.c");
    EXPECT_EQ(data.documents(static_cast<int32_t>(big - 1), 0), as_int32(docs));
  }
}

TEST(LlmcShards, SplitsByNameAndRefusesBadHeaders) {
  TempDir tmp;
  write_llmc(tmp.file("shakespeare_val.bin"), flat(sample_docs(4, 100, 1)), 1);
  write_llmc(tmp.file("shakespeare_train.bin"), flat(sample_docs(9, 100, 1)), 1);
  EXPECT_EQ(dha::TokenDataset::shard_paths(tmp.path(), "train"),
            std::vector<std::string>{tmp.file("shakespeare_train.bin")});
  EXPECT_EQ(dha::TokenDataset::shard_paths(tmp.path(), "heldout"),
            std::vector<std::string>{tmp.file("shakespeare_val.bin")});
  EXPECT_EQ(dha::TokenDataset(tmp.path(), "heldout").documents(1, 0).size(), 4u);
  std::string bytes = dha::io::read_file(tmp.file("shakespeare_train.bin"));
  dha::io::write_file_atomic(tmp.file("cut.bin"), bytes.substr(0, bytes.size() - 2));
  dha::test::expect_one_line_error([&] { dha::TokenShard s(tmp.file("cut.bin")); },
                                   {"cut.bin", "llm.c header says", "truncated"});
  bytes[4] = 7;  // version
  dha::io::write_file_atomic(tmp.file("v7.bin"), bytes);
  dha::test::expect_one_line_error([&] { dha::TokenShard s(tmp.file("v7.bin")); }, {"v7.bin", "version 7"});
}

TEST(MegatronShards, DocumentsFromTheIndexForEachTokenType) {
  TempDir tmp;
  for (bool uint16 : {true, false}) {
    const auto docs = sample_docs(30, 1000, 2);  // documents need not begin with a marker: the index finds them
    const std::string dir = tmp.file(uint16 ? "u16" : "i32");
    fs::create_directories(dir);
    write_megatron(dir + "/corpus_text_document", docs, uint16);
    const dha::TokenShard shard(dir + "/corpus_text_document.bin");
    EXPECT_EQ(shard.format(), "megatron");
    EXPECT_TRUE(shard.indexed());
    EXPECT_EQ(shard.documents(), 30);
    const dha::TokenDataset data(dir, "train");
    EXPECT_EQ(data.documents(-1, 0), as_int32(docs));
    EXPECT_EQ(data.documents(-1, 5).size(), 5u);
    EXPECT_TRUE(dha::TokenDataset::shard_paths(dir, "heldout").empty());
  }
}

TEST(MegatronShards, InconsistentIndexIsOneLineError) {
  TempDir tmp;
  write_megatron(tmp.file("c"), sample_docs(5, 100, 2), true);
  std::string bin = dha::io::read_file(tmp.file("c.bin"));
  dha::io::write_file_atomic(tmp.file("c.bin"), bin.substr(0, bin.size() - 2));
  dha::test::expect_one_line_error([&] { dha::TokenShard s(tmp.file("c.bin")); }, {"c.bin", "describes", "tokens"});
  std::string idx = dha::io::read_file(tmp.file("c.idx"));
  auto negative = sample_docs(3, 100, 2);
  negative[1][1] = -5;
  write_megatron(tmp.file("neg"), negative, /*uint16=*/false);
  dha::test::expect_one_line_error([&] { dha::TokenShard s(tmp.file("neg.bin")); }, {"neg.bin", "token -5", "not a token id"});
  idx[17] = 6;  // float64
  dha::io::write_file_atomic(tmp.file("c.idx"), idx);
  dha::test::expect_one_line_error([&] { dha::TokenShard s(tmp.file("c.bin")); }, {"c.idx", "dtype code 6"});
}

TEST(MegatronShards, WrittenByMegatronCoresOwnBuilder) {
  if (!python_has_megatron()) GTEST_SKIP() << "megatron-core is not installed in " << DHA_PYTHON;
  TempDir tmp;
  const std::string script = tmp.file("write.py");
  // Two documents of two sequences each, one of one, as IndexedDatasetBuilder writes them (uint16).
  dha::io::write_file_atomic(script, R"(import sys, numpy, torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder, IndexedDataset
prefix = sys.argv[1]
b = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
for doc in [[[5, 6, 7], [8, 9]], [[10]], [[11, 12], [13, 14, 15]]]:
    for seq in doc:
        b.add_item(torch.tensor(seq))
    b.end_document()
b.finalize(prefix + ".idx")
assert len(IndexedDataset(prefix)) == 5
)");
  ASSERT_EQ(std::system(("\"" + std::string(DHA_PYTHON) + "\" " + script + " " + tmp.file("mc")).c_str()), 0);
  const dha::TokenDataset data(tmp.path(), "train");
  EXPECT_EQ(data.documents(-1, 0),
            (std::vector<std::vector<int32_t>>{{5, 6, 7, 8, 9}, {10}, {11, 12, 13, 14, 15}}));
  EXPECT_EQ(data.vocab_size(), 16);
}

TEST(ForeignShards, TrainRefusesDataOutsideTheModelsVocabBeforeTheFirstStep) {
  TempDir tmp;
  const dha::ModelConfig config = dha::test::tiny_config();  // vocab 61
  dha::io::save_hf_dir(tmp.file("model"), dha::test::random_checkpoint(config, 1), {});
  fs::create_directories(tmp.file("data"));
  auto docs = sample_docs(40, 61, 1);
  docs[17][2] = 64;  // one id past the model's vocabulary
  write_llmc(tmp.file("data/d_train.bin"), flat(docs), 1);
  dha::test::expect_one_error_line("dha-train --model " + tmp.file("model") + " --data " + tmp.file("data") +
                                       " --out " + tmp.file("run") + " --steps 2 --seq-len 8 --batch 2 --device cpu",
                                   "llm.c data holds token id 64, outside the model's vocab of 61");
  // In range, it trains.
  docs[17][2] = 5;
  write_llmc(tmp.file("data/d_train.bin"), flat(docs), 1);
  const dha::test::ToolRun r = dha::test::run_tool("dha-train --model " + tmp.file("model") + " --data " +
                                                       tmp.file("data") + " --out " + tmp.file("run2") +
                                                       " --steps 2 --seq-len 8 --batch 2 --device cpu --eval-docs 0",
                                                   true);
  EXPECT_EQ(r.code, 0) << r.out;
}
