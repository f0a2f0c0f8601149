// The transformers remote code of dha directories (python/dha_hf/*.py), compiled into
// libdha by cmake/DhaEmbedFiles.cmake so that an installed library writes it too.
#pragma once

#include <cstddef>

namespace dha::io::detail {

struct EmbeddedFile {
  const char* name;  // file name in the model directory
  const char* text;
};

extern const EmbeddedFile kHfRemoteCode[];
extern const std::size_t kHfRemoteCodeCount;

}  // namespace dha::io::detail
