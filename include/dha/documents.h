// Where documents come from: the corpus formats dha-tokenize (and vocabulary
// training) reads, one row per format (src/data/document_formats.cpp), each
// read as a stream so that memory stays bounded whatever the input's size.
//
//   text     blank-line separated documents (split_documents' rule, dha/eval.h)
//   jsonl    one JSON object per line, the document in a string field
//   parquet  one document per row of a string column (when built with Arrow)
//
// Any of them may be compressed as .gz or .zst (the suffix after the format's).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dha {

struct DocumentInputOptions {
  std::string text_field = "text";  // JSONL: the record's field; Parquet: the column
  // A record without a string text field: counted and skipped (true) or an
  // error naming file, line and field (false).
  bool skip_bad = false;
};

class DocumentReader {
 public:
  virtual ~DocumentReader() = default;
  // The next document into `document`; false at the end of the input.
  virtual bool next(std::string& document) = 0;
  // Bytes of the file on disk consumed so far (compressed bytes for .gz/.zst).
  int64_t bytes_read() const { return bytes_read_; }
  // Records skipped as bad (skip_bad), and records whose text is empty (no document).
  int64_t skipped() const { return skipped_; }
  int64_t empty() const { return empty_; }

 protected:
  int64_t bytes_read_ = 0, skipped_ = 0, empty_ = 0;
};

// The format a path is read as, by its name: ".jsonl" / ".ndjson" -> "jsonl",
// ".parquet" -> "parquet", anything else -> "text"; a ".gz" / ".zst" / ".zstd"
// suffix is the compression, the rest names the format ("a.jsonl.zst": jsonl).
std::string document_format_name(const std::string& path);
// Whether the name alone says the format (.txt, .text, .jsonl, .ndjson,
// .parquet, each optionally compressed): what a directory expands to.
bool has_known_document_suffix(const std::string& path);

// Opens `path` in its format (one clear error for a missing file, a format this
// build lacks, or a damaged compressed stream).
std::unique_ptr<DocumentReader> open_documents(const std::string& path, const DocumentInputOptions& options);

// The documents of `path` (reads it through; what a held-out split needs first).
int64_t count_documents(const std::string& path, const DocumentInputOptions& options);

// The inputs as files, in the order they are read: a file as given; a directory:
// its files with a known suffix, recursively, sorted by path (byte order); a
// pattern with * ? [ : the matching files, sorted by path. Order otherwise as
// given. An input that matches nothing is an error naming it.
std::vector<std::string> expand_document_inputs(const std::vector<std::string>& inputs);

// Whether this build reads Parquet (it was configured with Apache Arrow).
bool parquet_supported();

// One line per format, for --help.
std::string document_formats_help();

}  // namespace dha
