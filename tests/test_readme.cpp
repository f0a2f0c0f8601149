// README.md shows tested code (its "From Python" block is tests/hf_readme_snippet.py,
// which HfRemoteCode.ReadmeSnippetRuns runs, line for line; ReadmeQuickstartRuns runs
// its quickstart) and stays short.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "dha/io/atomic_file.h"

TEST(Readme, FromPythonBlockIsTheTestedSnippet) {
  const std::string readme = dha::io::read_file(std::string(DHA_SOURCE_DIR) + "/README.md");
  std::string snippet = dha::io::read_file(std::string(DHA_SOURCE_DIR) + "/tests/hf_readme_snippet.py");
  ASSERT_FALSE(snippet.empty());
  const size_t section = readme.find("\n## From Python\n");
  ASSERT_NE(section, std::string::npos) << "README.md has no \"## From Python\" section";
  const size_t begin = readme.find("```python\n", section);
  ASSERT_NE(begin, std::string::npos) << "no ```python block in the From Python section";
  const size_t body = begin + std::string("```python\n").size();
  const size_t end = readme.find("```\n", body);
  ASSERT_NE(end, std::string::npos);
  EXPECT_EQ(readme.substr(body, end - body), snippet)
      << "README.md's From Python block differs from tests/hf_readme_snippet.py; copy the file into it";
}

// The README is the quickstart and the map; studies and references live in docs/.
TEST(Readme, StaysWithinTwoHundredFiftyLines) {
  const std::string readme = dha::io::read_file(std::string(DHA_SOURCE_DIR) + "/README.md");
  EXPECT_LE(std::count(readme.begin(), readme.end(), '\n'), 250)
      << "README.md grew past 250 lines; move the detail into docs/ and link it";
}
