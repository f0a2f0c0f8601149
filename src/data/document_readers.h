// The readers behind open_documents, one per corpus format (dha/documents.h).
// Private to src/data.
#pragma once

#include <memory>
#include <string>

#include "dha/documents.h"

namespace dha {

std::unique_ptr<DocumentReader> open_text_documents(const std::string& path, const DocumentInputOptions& options);
std::unique_ptr<DocumentReader> open_jsonl_documents(const std::string& path, const DocumentInputOptions& options);
// Throws, saying what to do, in a build without Apache Arrow.
std::unique_ptr<DocumentReader> open_parquet_documents(const std::string& path,
                                                       const DocumentInputOptions& options);

}  // namespace dha
