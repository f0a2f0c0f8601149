// Logging through spdlog, behind a torch-free interface: LibTorch ships its own
// fmt headers, which clash with the fmt that Debian's spdlog is built against,
// so spdlog is only ever included by src/log.cpp.
#pragma once

#include <sstream>
#include <string>
#include <utility>

namespace dha::log {

enum class Level { kInfo, kWarn, kError };

void write(Level level, const std::string& message);

template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

template <typename... Parts>
void info(Parts&&... parts) { write(Level::kInfo, concat(std::forward<Parts>(parts)...)); }
template <typename... Parts>
void warn(Parts&&... parts) { write(Level::kWarn, concat(std::forward<Parts>(parts)...)); }

}  // namespace dha::log
