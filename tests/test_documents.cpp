// Corpus formats (dha/documents.h): text streamed exactly as split_documents
// splits it, JSONL with its field and bad-record rules, .gz and .zst streams,
// input expansion; dha-tokenize's shards the same bytes for every --threads.
#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <cstdlib>
#include <random>
#include <nlohmann/json.hpp>

#include "../src/data/byte_stream.h"
#include "dha/corpus.h"
#include "dha/data.h"
#include "dha/documents.h"
#include "dha/eval.h"
#include "dha/io/atomic_file.h"
#include "dha/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::TempDir;
using dha::test::ToolRun;
using dha::test::run_tool;

namespace {

// Every document left in `reader`.
std::vector<std::string> drain(dha::DocumentReader& reader) {
  std::vector<std::string> docs;
  std::string doc;
  while (reader.next(doc)) docs.push_back(doc);
  return docs;
}

std::vector<std::string> read_all(const std::string& path, const dha::DocumentInputOptions& options = {}) {
  return drain(*dha::open_documents(path, options));
}

void write_gzip(const std::string& path, const std::string& data, int members = 1) {
  const size_t piece = data.size() / members + 1;
  std::string bytes;
  for (size_t at = 0; at < data.size(); at += piece) {  // each piece its own gzip member
    const std::string member = path + ".member";
    gzFile part = gzopen(member.c_str(), "wb");
    gzwrite(part, data.data() + at, static_cast<unsigned>(std::min(piece, data.size() - at)));
    gzclose(part);
    bytes += dha::io::read_file(member);
    fs::remove(member);
  }
  dha::io::write_file_atomic(path, bytes);
}

void write_zstd(const std::string& path, const std::string& data, int frames = 1) {
  std::string bytes;
  const size_t piece = data.size() / frames + 1;
  for (size_t at = 0; at < data.size(); at += piece) {
    const size_t n = std::min(piece, data.size() - at);
    std::string frame(ZSTD_compressBound(n), '\0');
    const size_t size = ZSTD_compress(&frame[0], frame.size(), data.data() + at, n, 3);
    ASSERT_FALSE(ZSTD_isError(size));
    frame.resize(size);
    bytes += frame;
  }
  dha::io::write_file_atomic(path, bytes);
}

// Text of lines made of words, spaces, tabs, \r and blank lines: every case of the split rule.
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> pieces = {"word", " ", "\t", "\r", "\n", "\n", "\n\n", " \n", "\r\n",
                                                  "\r\n\r\n", "é", "\f", "x y"};
  std::string text;
  const int n = std::uniform_int_distribution<int>(0, 40)(rng);
  for (int i = 0; i < n; ++i) text += pieces[std::uniform_int_distribution<size_t>(0, pieces.size() - 1)(rng)];
  return text;
}

std::vector<std::string> prose_documents(int n) {
  std::vector<std::string> docs;
  for (int i = 0; i < n; ++i)
    docs.push_back("Document " + std::to_string(i) + " tells of a cat named Tom " + std::string(i % 7, 'a') +
                   ".\nIt has a second line, number " + std::to_string(i * 31 % 17) + ".");
  return docs;
}

std::string jsonl_of(const std::vector<std::string>& docs, const std::string& field = "text") {
  std::string out;
  for (size_t i = 0; i < docs.size(); ++i) out += nlohmann::json{{"id", i}, {field, docs[i]}}.dump() + "\n";
  return out;
}

std::string text_of(const std::vector<std::string>& docs) {
  std::string out;
  for (const auto& doc : docs) out += doc + "\n\n";
  return out;
}

}  // namespace

TEST(LineReader, LinesAcrossEveryBufferBoundary) {
  TempDir tmp;
  const std::string data = "a\n\nbc\r\nlong line here\nlast";
  dha::io::write_file_atomic(tmp.file("lines.txt"), data);
  for (size_t buffer : {1, 2, 3, 5, 64}) {
    dha::LineReader reader(dha::open_byte_stream(tmp.file("lines.txt")), buffer);
    std::vector<std::string> lines;
    std::string line;
    while (reader.next(line)) lines.push_back(line);
    EXPECT_EQ(lines, (std::vector<std::string>{"a", "", "bc\r", "long line here", "last"})) << buffer;
    EXPECT_FALSE(reader.had_break());
  }
}

TEST(TextDocuments, StreamSplitsExactlyAsSplitDocuments) {
  TempDir tmp;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = random_text(rng);
    dha::io::write_file_atomic(tmp.file("t.txt"), text);
    ASSERT_EQ(read_all(tmp.file("t.txt")), dha::split_documents(text)) << ::testing::PrintToString(text);
  }
}

TEST(CompressedDocuments, GzipAndZstdReadAsThePlainFile) {
  TempDir tmp;
  const std::vector<std::string> docs = prose_documents(500);
  const std::string jsonl = jsonl_of(docs), text = text_of(docs);
  write_gzip(tmp.file("a.jsonl.gz"), jsonl, 3);  // concatenated members, as `cat a.gz b.gz` makes
  write_zstd(tmp.file("a.jsonl.zst"), jsonl, 4);
  write_zstd(tmp.file("a.txt.zst"), text);
  write_gzip(tmp.file("a.txt.gz"), text);
  EXPECT_EQ(read_all(tmp.file("a.jsonl.gz")), docs);
  EXPECT_EQ(read_all(tmp.file("a.jsonl.zst")), docs);
  EXPECT_EQ(read_all(tmp.file("a.txt.zst")), docs);
  EXPECT_EQ(read_all(tmp.file("a.txt.gz")), docs);
  EXPECT_EQ(dha::document_format_name("x/a.jsonl.zst"), "jsonl");
  EXPECT_EQ(dha::document_format_name("x/a.ndjson"), "jsonl");
  EXPECT_EQ(dha::document_format_name("x/a.parquet"), "parquet");
  EXPECT_EQ(dha::document_format_name("x/README"), "text");
  // Bytes read count the file on disk.
  const auto reader = dha::open_documents(tmp.file("a.jsonl.zst"), {});
  drain(*reader);
  EXPECT_EQ(reader->bytes_read(), static_cast<int64_t>(fs::file_size(tmp.file("a.jsonl.zst"))));
}

TEST(CompressedDocuments, DamagedOrTruncatedStreamsAreOneLineErrors) {
  TempDir tmp;
  const std::string jsonl = jsonl_of(prose_documents(200));
  write_zstd(tmp.file("z.jsonl.zst"), jsonl);
  std::string zstd = dha::io::read_file(tmp.file("z.jsonl.zst"));
  dha::io::write_file_atomic(tmp.file("cut.jsonl.zst"), zstd.substr(0, zstd.size() / 2));
  dha::test::expect_one_line_error([&] { read_all(tmp.file("cut.jsonl.zst")); }, {"cut.jsonl.zst", "truncated"});
  write_gzip(tmp.file("g.jsonl.gz"), jsonl);
  std::string gzip = dha::io::read_file(tmp.file("g.jsonl.gz"));
  dha::io::write_file_atomic(tmp.file("cut.jsonl.gz"), gzip.substr(0, gzip.size() / 2));
  dha::test::expect_one_line_error([&] { read_all(tmp.file("cut.jsonl.gz")); }, {"cut.jsonl.gz", "truncated"});
  dha::io::write_file_atomic(tmp.file("plain.jsonl.gz"), jsonl);  // not compressed at all
  dha::test::expect_one_line_error([&] { read_all(tmp.file("plain.jsonl.gz")); }, {"plain.jsonl.gz", "gzip"});
}

TEST(JsonlDocuments, OneDocumentPerRecordWhateverItsParagraphs) {
  TempDir tmp;
  const std::vector<std::string> docs = {"First paragraph.\n\nSecond paragraph.\n\n\nThird.", "  edges kept  ",
                                         "unicode: naïve café 漢字"};
  dha::io::write_file_atomic(tmp.file("d.jsonl"), jsonl_of(docs, "content") + "\n   \n");
  dha::DocumentInputOptions options;
  options.text_field = "content";
  EXPECT_EQ(read_all(tmp.file("d.jsonl"), options), docs);
}

TEST(JsonlDocuments, BadRecordsNameFileLineAndFieldOrAreCountedWithSkipBad) {
  TempDir tmp;
  const std::string file = tmp.file("bad.jsonl");
  dha::io::write_file_atomic(file, "{\"text\": \"good\"}\n{\"body\": \"x\", \"id\": 3}\n{\"text\": 7}\n[1, 2]\nnot json\n"
                                   "{\"text\": \"\"}\n{\"text\": \"also good\"}\n");
  dha::test::expect_one_line_error([&] { read_all(file); }, {"bad.jsonl:2:", "no field \"text\"", "body, id",
                                                             "--text-field", "--skip-bad"});
  dha::io::write_file_atomic(tmp.file("num.jsonl"), "{\"text\": 7}\n");
  dha::test::expect_one_line_error([&] { read_all(tmp.file("num.jsonl")); },
                                   {"num.jsonl:1:", "\"text\" is a number, not a string"});
  dha::io::write_file_atomic(tmp.file("broken.jsonl"), "{\"text\": \"a\"}\n\n{\"text\": \"b\n");
  dha::test::expect_one_line_error([&] { read_all(tmp.file("broken.jsonl")); }, {"broken.jsonl:3:", "not JSON"});
  dha::DocumentInputOptions skip;
  skip.skip_bad = true;
  const auto reader = dha::open_documents(file, skip);
  EXPECT_EQ(drain(*reader), (std::vector<std::string>{"good", "also good"}));
  EXPECT_EQ(reader->skipped(), 4);
  EXPECT_EQ(reader->empty(), 1);
}

TEST(DocumentInputs, DirectoriesAndPatternsExpandSortedByPath) {
  TempDir tmp;
  fs::create_directories(tmp.file("corpus/b"));
  for (const char* name : {"corpus/b/2.jsonl", "corpus/b/10.jsonl.zst", "corpus/a.txt", "corpus/README.md",
                           "corpus/notes", "corpus/c.parquet.gz"})
    dha::io::write_file_atomic(tmp.file(name), "x\n");
  EXPECT_EQ(dha::expand_document_inputs({tmp.file("corpus")}),
            (std::vector<std::string>{tmp.file("corpus/a.txt"), tmp.file("corpus/b/10.jsonl.zst"),
                                      tmp.file("corpus/b/2.jsonl")}));
  EXPECT_EQ(dha::expand_document_inputs({tmp.file("corpus/b/*.jsonl*"), tmp.file("corpus/notes")}),
            (std::vector<std::string>{tmp.file("corpus/b/10.jsonl.zst"), tmp.file("corpus/b/2.jsonl"),
                                      tmp.file("corpus/notes")}));
  dha::test::expect_one_line_error([&] { dha::expand_document_inputs({tmp.file("corpus/*.none")}); },
                                   {"*.none", "no file matches"});
  dha::test::expect_one_line_error([&] { dha::expand_document_inputs({tmp.file("missing.jsonl")}); },
                                   {"missing.jsonl", "no such file"});
  dha::test::expect_one_line_error([&] { dha::open_documents(tmp.file("corpus/c.parquet.gz"), {}); },
                                   {"c.parquet.gz", "uncompressed"});
}

// Written by pyarrow, the format's reference writer: small row groups, a null
// and an empty row, a string and a large_string column.
TEST(ParquetDocuments, RowsOfTheTextColumnAsPyarrowWroteThem) {
  if (!dha::parquet_supported()) GTEST_SKIP() << "this build reads no Parquet (no pyarrow when it was configured)";
  TempDir tmp;
  dha::io::write_file_atomic(tmp.file("write.py"), R"(import sys, pyarrow as pa, pyarrow.parquet as pq
texts = ["First.\n\nSecond paragraph.", "café 漢字", None, "", "  edges  "] + ["row %d" % i for i in range(20)]
table = pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string()),
                  "body": pa.array(texts, pa.large_string()), "n": list(range(len(texts)))})
pq.write_table(table, sys.argv[1], row_group_size=4)
)");
  const std::string file = tmp.file("t.parquet");
  ASSERT_EQ(std::system(("\"" + std::string(DHA_PYTHON) + "\" " + tmp.file("write.py") + " " + file).c_str()), 0);
  std::vector<std::string> expected = {"First.\n\nSecond paragraph.", "café 漢字", "  edges  "};
  for (int i = 0; i < 20; ++i) expected.push_back("row " + std::to_string(i));
  dha::test::expect_one_line_error([&] { read_all(file); }, {"t.parquet: row 2", "null", "--skip-bad"});
  dha::DocumentInputOptions options;
  options.skip_bad = true;
  const auto reader = dha::open_documents(file, options);
  EXPECT_EQ(drain(*reader), expected);
  EXPECT_EQ(reader->skipped(), 1);
  EXPECT_EQ(reader->empty(), 1);
  EXPECT_EQ(reader->bytes_read(), static_cast<int64_t>(fs::file_size(file)));
  options.text_field = "body";
  EXPECT_EQ(read_all(file, options), expected);
  options.text_field = "n";
  dha::test::expect_one_line_error([&] { read_all(file, options); }, {"t.parquet", "\"n\" is int64, not a string"});
  options.text_field = "content";
  dha::test::expect_one_line_error([&] { read_all(file, options); }, {"no column \"content\"", "id, text, body, n"});
}

// A small sentencepiece vocabulary trained here, so that no fixture is needed.
class CorpusTokenizing : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = prose_documents(400);
    dha::io::write_file_atomic(tmp_.file("corpus.txt"), text_of(docs_));
    dha::io::write_file_atomic(tmp_.file("corpus.jsonl"), jsonl_of(docs_));
    dha::train_sentencepiece({tmp_.file("corpus.txt")}, 300, 0.0, tmp_.file("tokenizer.model"), 1);
    tokenizer_ = dha::load_tokenizer(tmp_.file("tokenizer.model"));
  }
  std::map<std::string, std::string> shard_bytes(const std::string& dir) const {
    std::map<std::string, std::string> bytes;
    for (const auto& entry : fs::directory_iterator(dir))
      bytes[entry.path().filename().string()] = dha::io::read_file(entry.path().string());
    return bytes;
  }
  TempDir tmp_;
  std::vector<std::string> docs_;
  std::unique_ptr<dha::Tokenizer> tokenizer_;
};

TEST_F(CorpusTokenizing, ShardsAreTheSameBytesForEveryThreadCount) {
  dha::CorpusOptions options;
  options.heldout = 0.1;
  options.shard_tokens = 3000;  // several shards
  options.batch_bytes = 700;    // many batches
  std::map<std::string, std::string> first;
  for (int threads : {1, 2, 7}) {
    options.threads = threads;
    const std::string out = tmp_.file("out" + std::to_string(threads));
    fs::create_directories(out);
    const dha::CorpusSummary s =
        dha::tokenize_corpus(*tokenizer_, {tmp_.file("corpus.jsonl"), tmp_.file("corpus.txt")}, out, options, false);
    EXPECT_EQ(s.threads, threads);
    EXPECT_EQ(s.train_docs + s.heldout_docs, 800);
    EXPECT_EQ(s.heldout_docs, 80);
    EXPECT_GT(s.train_shards, 2);
    if (first.empty())
      first = shard_bytes(out);
    else
      EXPECT_TRUE(shard_bytes(out) == first) << threads << " threads wrote other shards";
  }
  // The JSONL copy of the corpus gave the same documents as its text copy.
  const dha::TokenDataset train(tmp_.file("out1"), "train");
  const auto documents = train.documents(tokenizer_->bos_id(), 0);
  ASSERT_EQ(documents.size(), 720u);
  for (size_t d = 0; d < 360; ++d) {
    EXPECT_EQ(documents[d], dha::encode_document(*tokenizer_, docs_[d]));
    EXPECT_EQ(documents[d + 360], documents[d]);
  }
}

TEST_F(CorpusTokenizing, ToolReadsCompressedJsonlWithItsFieldAndReportsSkippedRecords) {
  std::string jsonl = jsonl_of(docs_, "body");
  jsonl += "{\"title\": \"no body\"}\n";
  write_zstd(tmp_.file("c.jsonl.zst"), jsonl);
  const std::string base = "dha-tokenize --tokenizer " + tmp_.file("tokenizer.model") + " --threads 2 ";
  dha::test::expect_one_error_line(base + "--out " + tmp_.file("bad") + " " + tmp_.file("c.jsonl.zst"),
                                   "c.jsonl.zst:1: no field \"text\"");
  EXPECT_FALSE(fs::exists(tmp_.file("bad")));  // nothing half-written
  dha::test::expect_one_error_line(base + "--text-field body --out " + tmp_.file("bad") + " " + tmp_.file("c.jsonl.zst"),
                                   "c.jsonl.zst:401: no field \"body\"");
  const ToolRun r = run_tool(base + "--text-field body --skip-bad --out " + tmp_.file("ok") + " " +
                                 tmp_.file("c.jsonl.zst"),
                             false);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("skipped 1 bad records"), std::string::npos) << r.out;
  const auto meta = nlohmann::json::parse(dha::io::read_file(tmp_.file("ok/data.json")));
  EXPECT_EQ(meta["train"]["docs"], 400);
  EXPECT_EQ(meta["skipped_records"], 1);
  EXPECT_EQ(meta["inputs"][0]["format"], "jsonl");
  EXPECT_EQ(meta["inputs"][0]["skipped"], 1);
  EXPECT_EQ(meta["text_field"], "body");
}
