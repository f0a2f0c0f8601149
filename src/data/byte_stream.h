// A file's bytes as they stream off disk, decompressed when the name says so
// (.gz: zlib, every gzip member; .zst/.zstd: every zstd frame), and its lines.
// Private to src/data.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace dha {

class ByteStream {
 public:
  virtual ~ByteStream() = default;
  // Up to `size` decompressed bytes into `out`; 0 at the end.
  virtual size_t read(char* out, size_t size) = 0;
  // Bytes of the file consumed so far (compressed bytes).
  virtual int64_t file_bytes_read() const = 0;
};

// The compression a name implies ("gzip", "zstd" or "" for none) and the name
// without its compression suffix.
std::string compression_of(const std::string& path);
std::string strip_compression_suffix(const std::string& path);

std::unique_ptr<ByteStream> open_byte_stream(const std::string& path);

// Lines of a stream, each without its "\n" (a "\r" before it is kept: the
// caller decides what a line break is).
class LineReader {
 public:
  explicit LineReader(std::unique_ptr<ByteStream> stream, size_t buffer_bytes = 1 << 20);
  // The next line; false at the end. A last line without "\n" is still a line.
  bool next(std::string& line);
  // Whether the line just read ended with "\n".
  bool had_break() const { return had_break_; }
  int64_t line_number() const { return line_number_; }
  int64_t file_bytes_read() const { return stream_->file_bytes_read(); }

 private:
  bool fill();
  std::unique_ptr<ByteStream> stream_;
  std::string buffer_;
  size_t begin_ = 0, end_ = 0;
  bool eof_ = false, had_break_ = false;
  int64_t line_number_ = 0;
};

}  // namespace dha
