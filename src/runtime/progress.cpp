// Progress lines with rate and ETA.
#include "dha/progress.h"

#include <unistd.h>

#include <cstdio>

namespace dha {

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

void Progress::update(int64_t done, const std::string& status) {
  status_ = status;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_print_ < std::chrono::milliseconds(200)) return;
    last_print_ = now;
    print(done, false);
  } else if (total_ > 0) {
    const int64_t decile = done * 10 / total_;
    if (decile > last_decile_ && done < total_) {
      last_decile_ = decile;
      print(done, false);
    }
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  print(total_ > 0 ? total_ : 0, true);
}

void Progress::print(int64_t done, bool final) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = seconds > 0 ? done / seconds : 0.0;
  char line[256];
  int n = std::snprintf(line, sizeof(line), "%s: %lld", label_.c_str(), static_cast<long long>(done));
  if (total_ > 0) n += std::snprintf(line + n, sizeof(line) - n, "/%lld", static_cast<long long>(total_));
  n += std::snprintf(line + n, sizeof(line) - n, " %s, %.1f %s/s", unit_.c_str(), rate, unit_.c_str());
  if (final) {
    std::snprintf(line + n, sizeof(line) - n, ", %.1fs", seconds);
  } else if (total_ > 0 && rate > 0) {
    std::snprintf(line + n, sizeof(line) - n, ", ETA %.0fs", (total_ - done) / rate);
  }
  const std::string status = status_.empty() ? "" : " | " + status_;
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s%s", line, status.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s%s\n", line, status.c_str());
  }
  std::fflush(stderr);
}

}  // namespace dha
