// Helpers shared by the tests: paths to ../shared fixtures, temporary directories.
#pragma once

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>

#include <gtest/gtest.h>

namespace dha::test {

// ../shared beside the checkout (models and text); tests that need it skip when absent.
inline std::string shared_path(const std::string& relative) {
  return std::string(DHA_SHARED_DIR) + "/" + relative;
}

// A fresh directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The result of running a command-line tool of the build tree.
struct ToolRun {
  int code = -1;
  std::string out;
};

// Runs "DHA_TOOLS_DIR/<args>" through the shell (so `args` may start with
// environment assignments: "RANK=1 dha-train ..."). stderr_only: capture
// stderr and drop stdout; else capture stdout and drop stderr.
ToolRun run_tool(const std::string& args, bool stderr_only);

// Runs a tool that must fail on bad input: exit code 1 and one line on stderr
// containing `text`.
void expect_one_error_line(const std::string& args, const std::string& text);

// `f` must throw a dha::Error whose message contains `text`.
void expect_error_containing(const std::function<void()>& f, const std::string& text);

// `f` must throw a dha::Error whose message is one line containing every needle.
void expect_one_line_error(const std::function<void()>& f, std::initializer_list<std::string> needles);
inline void expect_one_line_error(const std::function<void()>& f, const std::string& needle) {
  expect_one_line_error(f, {needle});
}

// A TCP port that was free a moment ago (for rendezvous in tests).
int free_port();

// Whether DHA_PYTHON imports `modules` ("transformers, safetensors"): the
// optional references a test skips without.
bool python_imports(const std::string& modules);

}  // namespace dha::test

// Skips the current test with a clear message when a ../shared fixture is missing.
#define DHA_REQUIRE_SHARED(relative)                                                  \
  do {                                                                                \
    if (!std::filesystem::exists(::dha::test::shared_path(relative)))                 \
      GTEST_SKIP() << "fixture " << ::dha::test::shared_path(relative)                \
                   << " is absent (../shared is not beside this checkout)";          \
  } while (0)
