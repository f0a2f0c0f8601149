// Parquet: one document per row of a string column, read a record batch at a
// time with Apache Arrow's C++ libraries (those the pyarrow wheel ships; see
// cmake/DhaDependencies.cmake). Arrow's headers need C++20: this file alone is
// compiled so, and includes no torch.
#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>
#include <parquet/exception.h>

#include "../document_readers.h"
#include "dha/error.h"

namespace dha {

namespace {

template <typename T>
T ok_or_fail(arrow::Result<T> result, const std::string& path, const char* what) {
  if (!result.ok()) fail(path, ": ", what, " (arrow: ", result.status().ToString(), ")");
  return std::move(result).ValueUnsafe();
}

void ok_or_fail(const arrow::Status& status, const std::string& path, const char* what) {
  if (!status.ok()) fail(path, ": ", what, " (arrow: ", status.ToString(), ")");
}

class ParquetDocuments : public DocumentReader {
 public:
  ParquetDocuments(const std::string& path, DocumentInputOptions options) : path_(path), options_(std::move(options)) {
    auto file = ok_or_fail(arrow::io::ReadableFile::Open(path), path, "cannot open");
    file_bytes_ = ok_or_fail(file->GetSize(), path, "cannot size");
    parquet::arrow::FileReaderBuilder builder;
    ok_or_fail(builder.Open(file), path, "not a Parquet file");
    parquet::ArrowReaderProperties properties;
    properties.set_batch_size(1024);
    builder.properties(properties);
    reader_ = ok_or_fail(builder.Build(), path, "cannot read its metadata");
    std::shared_ptr<arrow::Schema> schema;
    ok_or_fail(reader_->GetSchema(&schema), path, "cannot read its schema");
    const int field = schema->GetFieldIndex(options_.text_field);
    if (field < 0) {
      std::string names;
      for (int i = 0; i < schema->num_fields() && i < 8; ++i) names += (i ? ", " : "") + schema->field(i)->name();
      fail(path, ": no column \"", options_.text_field, "\" (its columns: ", names.empty() ? "none" : names,
           "); --text-field names the column that holds the text");
    }
    const auto type = schema->field(field)->type()->id();
    if (type != arrow::Type::STRING && type != arrow::Type::LARGE_STRING && type != arrow::Type::STRING_VIEW)
      fail(path, ": column \"", options_.text_field, "\" is ", schema->field(field)->type()->ToString(),
           ", not a string column");
    const auto metadata = reader_->parquet_reader()->metadata();
    rows_ = metadata->num_rows();
    const int leaf = metadata->schema()->ColumnIndex(options_.text_field);
    if (leaf < 0) fail(path, ": column \"", options_.text_field, "\" is not a top-level leaf column");
    std::vector<int> row_groups(reader_->num_row_groups());
    for (int i = 0; i < static_cast<int>(row_groups.size()); ++i) row_groups[i] = i;
    batches_ = ok_or_fail(reader_->GetRecordBatchReader(row_groups, {leaf}), path, "cannot read its rows");
  }

  bool next(std::string& document) override {
    for (;;) {
      while (!column_ || at_ == column_->length()) {
        std::shared_ptr<arrow::RecordBatch> batch;
        ok_or_fail(batches_->ReadNext(&batch), path_, "cannot read a record batch");
        if (!batch) {
          bytes_read_ = file_bytes_;
          return false;
        }
        column_ = batch->column(0);
        at_ = 0;
      }
      const int64_t row = row_++;
      const int64_t i = at_++;
      // Bytes in proportion to the rows read: Parquet decodes by row group.
      bytes_read_ = rows_ > 0 ? file_bytes_ * row_ / rows_ : file_bytes_;
      if (column_->IsNull(i)) {
        if (!options_.skip_bad)
          fail(path_, ": row ", row, ": column \"", options_.text_field, "\" is null; --skip-bad skips such rows");
        skipped_ += 1;
        continue;
      }
      std::string_view text;
      if (column_->type_id() == arrow::Type::STRING)
        text = static_cast<const arrow::StringArray&>(*column_).GetView(i);
      else if (column_->type_id() == arrow::Type::LARGE_STRING)
        text = static_cast<const arrow::LargeStringArray&>(*column_).GetView(i);
      else
        text = static_cast<const arrow::StringViewArray&>(*column_).GetView(i);
      if (text.empty()) {
        empty_ += 1;
        continue;
      }
      document.assign(text.data(), text.size());
      return true;
    }
  }

 private:
  std::string path_;
  DocumentInputOptions options_;
  std::unique_ptr<parquet::arrow::FileReader> reader_;
  std::unique_ptr<arrow::RecordBatchReader> batches_;
  std::shared_ptr<arrow::Array> column_;
  int64_t at_ = 0, row_ = 0, rows_ = 0, file_bytes_ = 0;
};

}  // namespace

bool parquet_supported() { return true; }

std::unique_ptr<DocumentReader> open_parquet_documents(const std::string& path, const DocumentInputOptions& options) {
  try {
    return std::make_unique<ParquetDocuments>(path, options);
  } catch (const parquet::ParquetException& e) {
    fail(path, ": not a readable Parquet file (", e.what(), ")");
  }
}

}  // namespace dha
