// Temporary directories for tests.
#include "test_util.h"

#include "dha/error.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
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

ToolRun run_tool(const std::string& args, bool stderr_only) {
  std::string command = args;
  // Environment assignments stay in front; the tool name gets the build directory.
  size_t name = 0;
  while (true) {
    const size_t space = command.find(' ', name);
    const size_t equals = command.find('=', name);
    if (equals == std::string::npos || space == std::string::npos || equals > space) break;
    name = space + 1;
  }
  command.insert(name, std::string(DHA_TOOLS_DIR) + "/");
  command += stderr_only ? " 2>&1 >/dev/null" : " 2>/dev/null";
  ToolRun r;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) r.out.append(buffer.data(), n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void expect_one_error_line(const std::string& args, const std::string& text) {
  const ToolRun r = run_tool(args, /*stderr_only=*/true);
  EXPECT_EQ(r.code, 1) << args;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(text), std::string::npos) << r.out;
}

void expect_error_containing(const std::function<void()>& f, const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "expected dha::Error containing '" << text << "'";
  } catch (const dha::Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

void expect_one_line_error(const std::function<void()>& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected a dha::Error";
  } catch (const dha::Error& e) {
    const std::string m = e.what();
    for (const auto& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "message: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "message: " << m;
  }
}

bool python_imports(const std::string& modules) {
  const std::string command = std::string("\"") + DHA_PYTHON + "\" -c 'import " + modules + "' >/dev/null 2>&1";
  return std::system(command.c_str()) == 0;
}

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t length = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0)
    throw std::runtime_error("cannot find a free port");
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace dha::test
