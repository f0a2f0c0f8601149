// Progress for long loops: a refreshed line with rate and ETA on a terminal,
// plain lines (about every 10%) otherwise, so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dha {

class Progress {
 public:
  // total <= 0: unknown total (no ETA). Writes to stderr.
  Progress(std::string label, int64_t total, std::string unit);
  // `status` (e.g. "loss 2.31, 12000 tok/s") is appended to the line.
  void update(int64_t done, const std::string& status = "");
  void finish();

 private:
  std::string label_, unit_;
  int64_t total_;
  bool tty_;
  int64_t last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_print_;
  bool finished_ = false;
  std::string status_;
  void print(int64_t done, bool final);
};

}  // namespace dha
