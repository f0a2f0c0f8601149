// Plain text: documents separated by blank lines, streamed line by line with
// exactly split_documents' rule (dha/eval.h; tests/test_documents.cpp holds
// the two equal): a document runs from its first non-blank line to the end of
// its last line's text, inner line breaks as written.
#include "byte_stream.h"
#include "dha/eval.h"
#include "document_readers.h"

namespace dha {

namespace {

class TextDocuments : public DocumentReader {
 public:
  explicit TextDocuments(const std::string& path) : lines_(open_byte_stream(path)) {}

  bool next(std::string& document) override {
    document.clear();
    size_t last_break = 0;  // bytes of the open document's final line break ("\n" or "\r\n")
    std::string line;
    while (lines_.next(line)) {
      if (is_blank_line(line)) {
        if (!document.empty()) break;
        continue;
      }
      document += line;
      last_break = 0;
      if (lines_.had_break()) {
        document += '\n';
        last_break = line.back() == '\r' ? 2 : 1;
      }
    }
    bytes_read_ = lines_.file_bytes_read();
    if (document.empty()) return false;
    document.resize(document.size() - last_break);
    return true;
  }

 private:
  LineReader lines_;
};

}  // namespace

std::unique_ptr<DocumentReader> open_text_documents(const std::string& path, const DocumentInputOptions&) {
  return std::make_unique<TextDocuments>(path);
}

}  // namespace dha
