// Parquet in a build without Apache Arrow: a Parquet input gets an error that
// says how to get a build that reads it (arrow_reader.cpp is the reader).
#include "../document_readers.h"
#include "dha/error.h"

namespace dha {

bool parquet_supported() { return false; }

std::unique_ptr<DocumentReader> open_parquet_documents(const std::string& path, const DocumentInputOptions&) {
  fail(path, ": this build of dha reads no Parquet (it was configured without Apache Arrow's C++ libraries); run "
       "scripts/setup, which installs pyarrow into .venv, and configure again, or convert the file to JSONL");
}

}  // namespace dha
