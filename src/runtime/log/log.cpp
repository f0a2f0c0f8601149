// The spdlog backend of dha::log (compiled without torch's include paths).
#include "dha/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace dha::log {
namespace {

// All diagnostics go to stderr so that stdout carries only results.
spdlog::logger& logger() {
  static const auto instance = [] {
    auto l = spdlog::stderr_color_mt("dha");
    l->set_pattern("%^[%l]%$ %v");
    return l;
  }();
  return *instance;
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarn: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

void write(Level level, const std::string& message) { logger().log(to_spdlog(level), message); }

}  // namespace dha::log
