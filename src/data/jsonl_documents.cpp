// JSON Lines: one JSON object per line, the document in its text field (a
// record of several paragraphs is one document). Blank lines are no record.
#include <nlohmann/json.hpp>

#include "byte_stream.h"
#include "dha/error.h"
#include "dha/eval.h"
#include "document_readers.h"

namespace dha {

namespace {

std::string field_names(const nlohmann::json& record) {
  std::string names;
  int listed = 0;
  for (auto it = record.begin(); it != record.end(); ++it) {
    if (listed == 8) return names + ", ...";
    names += (listed++ ? ", " : "") + it.key();
  }
  return names.empty() ? "none" : names;
}

class JsonlDocuments : public DocumentReader {
 public:
  JsonlDocuments(const std::string& path, DocumentInputOptions options)
      : path_(path), options_(std::move(options)), lines_(open_byte_stream(path)) {}

  bool next(std::string& document) override {
    std::string line;
    while (lines_.next(line)) {
      bytes_read_ = lines_.file_bytes_read();
      if (is_blank_line(line)) continue;
      std::string problem;
      nlohmann::json record;
      try {
        record = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        problem = std::string("not JSON (") + e.what() + ")";
      }
      if (problem.empty()) {
        const auto field = record.is_object() ? record.find(options_.text_field) : record.end();
        if (!record.is_object())
          problem = std::string("the record is a JSON ") + record.type_name() + ", not an object";
        else if (field == record.end())
          problem = "no field \"" + options_.text_field + "\" (its fields: " + field_names(record) +
                    "); --text-field names the field that holds the text";
        else if (!field->is_string())
          problem = "field \"" + options_.text_field + "\" is a " + field->type_name() + ", not a string";
        else
          document = field->get<std::string>();
      }
      if (!problem.empty()) {
        const std::string where = path_ + ":" + std::to_string(lines_.line_number()) + ": ";
        if (!options_.skip_bad) fail(where, problem, "; --skip-bad skips such records");
        skipped_ += 1;
        continue;
      }
      if (document.empty()) {
        empty_ += 1;
        continue;
      }
      return true;
    }
    bytes_read_ = lines_.file_bytes_read();
    return false;
  }

 private:
  std::string path_;
  DocumentInputOptions options_;
  LineReader lines_;
};

}  // namespace

std::unique_ptr<DocumentReader> open_jsonl_documents(const std::string& path, const DocumentInputOptions& options) {
  return std::make_unique<JsonlDocuments>(path, options);
}

}  // namespace dha
