// Temporary directories for tests.
#include "test_util.h"

#include <cstdlib>
#include <stdexcept>

namespace dha::test {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "dha-test-XXXXXX").string();
  if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace dha::test
