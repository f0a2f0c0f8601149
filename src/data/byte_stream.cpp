// Plain, gzip and zstd byte streams, read in fixed-size pieces.
#include "byte_stream.h"

#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "dha/error.h"

namespace dha {

namespace {

constexpr size_t kInputBytes = 1 << 18;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The compressions, a row each: the suffixes that name it.
struct CompressionRow {
  const char* name;
  std::vector<std::string> suffixes;
};
const std::vector<CompressionRow>& compression_rows() {
  static const std::vector<CompressionRow> rows = {{"gzip", {".gz"}}, {"zstd", {".zst", ".zstd"}}};
  return rows;
}

class File {
 public:
  explicit File(const std::string& path) : path_(path), file_(std::fopen(path.c_str(), "rb")) {
    if (!file_) fail(path, ": cannot open (", std::strerror(errno), ")");
  }
  ~File() { std::fclose(file_); }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  size_t read(char* out, size_t size) {
    const size_t n = std::fread(out, 1, size, file_);
    if (n < size && std::ferror(file_)) fail(path_, ": read error (", std::strerror(errno), ")");
    bytes_ += static_cast<int64_t>(n);
    return n;
  }
  int64_t bytes() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_;
  int64_t bytes_ = 0;
};

class PlainStream : public ByteStream {
 public:
  explicit PlainStream(const std::string& path) : file_(path) {}
  size_t read(char* out, size_t size) override { return file_.read(out, size); }
  int64_t file_bytes_read() const override { return file_.bytes(); }

 private:
  File file_;
};

class GzipStream : public ByteStream {
 public:
  explicit GzipStream(const std::string& path) : file_(path), input_(kInputBytes) {
    std::memset(&z_, 0, sizeof(z_));
    if (inflateInit2(&z_, 15 + 32) != Z_OK) fail(path, ": zlib could not start");  // 32: a gzip header
  }
  ~GzipStream() override { inflateEnd(&z_); }
  int64_t file_bytes_read() const override { return file_.bytes(); }

  size_t read(char* out, size_t size) override {
    z_.next_out = reinterpret_cast<Bytef*>(out);
    z_.avail_out = static_cast<uInt>(size);
    while (z_.avail_out == size) {
      if (z_.avail_in == 0) {
        z_.avail_in = static_cast<uInt>(file_.read(input_.data(), input_.size()));
        z_.next_in = reinterpret_cast<Bytef*>(input_.data());
        if (z_.avail_in == 0) {
          if (in_member_) fail(file_.path(), ": the gzip stream ends inside a member (a truncated file?)");
          break;
        }
      }
      in_member_ = true;
      const int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        in_member_ = false;  // another member may follow (concatenated .gz files)
        inflateReset(&z_);
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        fail(file_.path(), ": not a valid gzip stream (zlib: ", z_.msg ? z_.msg : "error", ") near byte ",
             file_.bytes() - static_cast<int64_t>(z_.avail_in));
      }
    }
    return size - z_.avail_out;
  }

 private:
  File file_;
  std::vector<char> input_;
  z_stream z_;
  bool in_member_ = false;
};

class ZstdStream : public ByteStream {
 public:
  explicit ZstdStream(const std::string& path) : file_(path), input_(ZSTD_DStreamInSize()) {
    context_ = ZSTD_createDCtx();
    if (!context_) fail(path, ": zstd could not start");
  }
  ~ZstdStream() override { ZSTD_freeDCtx(context_); }
  int64_t file_bytes_read() const override { return file_.bytes(); }

  size_t read(char* out, size_t size) override {
    ZSTD_outBuffer output{out, size, 0};
    while (output.pos == 0) {
      if (in_.pos == in_.size) {
        in_.size = file_.read(input_.data(), input_.size());
        in_.src = input_.data();
        in_.pos = 0;
        if (in_.size == 0) {
          if (in_frame_) fail(file_.path(), ": the zstd stream ends inside a frame (a truncated file?)");
          break;
        }
      }
      const size_t rc = ZSTD_decompressStream(context_, &output, &in_);
      if (ZSTD_isError(rc))
        fail(file_.path(), ": not a valid zstd stream (zstd: ", ZSTD_getErrorName(rc), ") near byte ",
             file_.bytes() - static_cast<int64_t>(in_.size - in_.pos));
      in_frame_ = rc != 0;  // 0: a frame is complete (another may follow)
    }
    return output.pos;
  }

 private:
  File file_;
  std::vector<char> input_;
  ZSTD_DCtx* context_ = nullptr;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  bool in_frame_ = false;
};

}  // namespace

std::string compression_of(const std::string& path) {
  for (const auto& row : compression_rows())
    for (const auto& suffix : row.suffixes)
      if (ends_with(path, suffix)) return row.name;
  return "";
}

std::string strip_compression_suffix(const std::string& path) {
  for (const auto& row : compression_rows())
    for (const auto& suffix : row.suffixes)
      if (ends_with(path, suffix)) return path.substr(0, path.size() - suffix.size());
  return path;
}

std::unique_ptr<ByteStream> open_byte_stream(const std::string& path) {
  const std::string compression = compression_of(path);
  if (compression == "gzip") return std::make_unique<GzipStream>(path);
  if (compression == "zstd") return std::make_unique<ZstdStream>(path);
  return std::make_unique<PlainStream>(path);
}

LineReader::LineReader(std::unique_ptr<ByteStream> stream, size_t buffer_bytes)
    : stream_(std::move(stream)), buffer_(buffer_bytes, '\0') {}

bool LineReader::fill() {
  if (eof_) return false;
  if (begin_ > 0) {  // keep the unread part at the front
    std::memmove(&buffer_[0], &buffer_[begin_], end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (end_ == buffer_.size()) buffer_.resize(buffer_.size() * 2);  // a line longer than the buffer
  const size_t n = stream_->read(&buffer_[end_], buffer_.size() - end_);
  if (n == 0) eof_ = true;
  end_ += n;
  return n > 0;
}

bool LineReader::next(std::string& line) {
  size_t scanned = begin_;
  for (;;) {
    const void* found = std::memchr(buffer_.data() + scanned, '\n', end_ - scanned);
    if (found) {
      const size_t at = static_cast<const char*>(found) - buffer_.data();
      line.assign(buffer_, begin_, at - begin_);
      begin_ = at + 1;
      had_break_ = true;
      line_number_ += 1;
      return true;
    }
    const size_t open = end_ - begin_;  // the open line's bytes so far, none of them "\n"
    if (!fill()) break;
    scanned = begin_ + open;
  }
  if (begin_ == end_) return false;
  line.assign(buffer_, begin_, end_ - begin_);
  begin_ = end_;
  had_break_ = false;
  line_number_ += 1;
  return true;
}

}  // namespace dha
