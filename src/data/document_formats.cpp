// The corpus formats, a row each: its name, the suffixes that name it, what it
// holds, and its reader (its own file: text_documents.cpp, jsonl_documents.cpp,
// parquet_documents.cpp). Inputs expand here too (directories, patterns).
#include <glob.h>

#include <algorithm>
#include <filesystem>

#include "byte_stream.h"
#include "dha/documents.h"
#include "dha/error.h"
#include "document_readers.h"

namespace dha {

namespace fs = std::filesystem;

namespace {

using OpenReader = std::unique_ptr<DocumentReader> (*)(const std::string&, const DocumentInputOptions&);

struct DocumentFormatRow {
  const char* name;
  std::vector<std::string> suffixes;  // before any compression suffix
  bool compressible;                  // may carry .gz / .zst
  const char* holds;
  OpenReader open;
};

// text is also what a name without a known suffix is read as.
const std::vector<DocumentFormatRow>& format_rows() {
  static const std::vector<DocumentFormatRow> rows = {
      {"text", {".txt", ".text"}, true, "UTF-8 text, documents separated by blank lines", open_text_documents},
      {"jsonl", {".jsonl", ".ndjson"}, true, "one JSON object per line, the document in --text-field",
       open_jsonl_documents},
      {"parquet", {".parquet"}, false, "one document per row of the string column --text-field",
       open_parquet_documents},
  };
  return rows;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The row a name names by suffix, or nullptr.
const DocumentFormatRow* row_by_suffix(const std::string& path) {
  const std::string base = strip_compression_suffix(path);
  for (const auto& row : format_rows())
    for (const auto& suffix : row.suffixes)
      if (ends_with(base, suffix)) return &row;
  return nullptr;
}

const DocumentFormatRow& row_for(const std::string& path) {
  const DocumentFormatRow* row = row_by_suffix(path);
  return row ? *row : format_rows().front();
}

bool is_pattern(const std::string& input) { return input.find_first_of("*?[") != std::string::npos; }

}  // namespace

std::string document_format_name(const std::string& path) { return row_for(path).name; }

bool has_known_document_suffix(const std::string& path) {
  const DocumentFormatRow* row = row_by_suffix(path);
  return row && (row->compressible || compression_of(path).empty());
}

std::unique_ptr<DocumentReader> open_documents(const std::string& path, const DocumentInputOptions& options) {
  if (!fs::is_regular_file(path)) fail(path, ": no such file");
  const DocumentFormatRow& row = row_for(path);
  if (!row.compressible && !compression_of(path).empty())
    fail(path, ": a ", row.name, " file is read uncompressed (its format compresses inside); decompress it first");
  return row.open(path, options);
}

int64_t count_documents(const std::string& path, const DocumentInputOptions& options) {
  const auto reader = open_documents(path, options);
  std::string document;
  int64_t n = 0;
  while (reader->next(document)) n += 1;
  return n;
}

std::vector<std::string> expand_document_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& input : inputs) {
    std::vector<std::string> found;
    if (fs::is_directory(input)) {
      for (const auto& entry : fs::recursive_directory_iterator(input, fs::directory_options::follow_directory_symlink))
        if (entry.is_regular_file() && has_known_document_suffix(entry.path().string()))
          found.push_back(entry.path().string());
      if (found.empty())
        fail(input, ": a directory with no file of a known corpus format (", document_formats_help(), ")");
    } else if (!fs::exists(input) && is_pattern(input)) {
      glob_t matches{};
      const int rc = ::glob(input.c_str(), GLOB_NOSORT, nullptr, &matches);
      for (size_t i = 0; rc == 0 && i < matches.gl_pathc; ++i)
        if (fs::is_regular_file(matches.gl_pathv[i])) found.push_back(matches.gl_pathv[i]);
      ::globfree(&matches);
      if (found.empty()) fail(input, ": no file matches this pattern");
    } else {
      if (!fs::is_regular_file(input)) fail(input, ": no such file");
      found.push_back(input);
    }
    std::sort(found.begin(), found.end());  // byte order, whatever the locale
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

std::string document_formats_help() {
  std::string help;
  for (const auto& row : format_rows()) {
    if (!help.empty()) help += "; ";
    help += std::string(row.name) + " (";
    for (size_t i = 0; i < row.suffixes.size(); ++i) help += (i ? ", " : "") + row.suffixes[i];
    // The same text in every build (the docs are generated from it): a build
    // without Parquet says so when given a Parquet file.
    help += std::string(row.compressible ? ", also .gz/.zst" : "") + "): " + row.holds;
  }
  return help + "; any other name is read as text";
}

}  // namespace dha
