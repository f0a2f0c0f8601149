// Atomic writes: write to a temporary sibling, fsync, rename over the target.
// A reader never sees a half-written file, whatever interrupts the writer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace dha::io {

// Writes `bytes` to `path` atomically (temporary file in the same directory,
// fsync, rename, fsync of the directory). Throws dha::Error naming the path.
void write_file_atomic(const std::string& path, std::string_view bytes);

// The same, written piece by piece (a file larger than memory can hold twice,
// such as a 7B model's tensors): write() appends to the temporary, commit()
// makes it the target; destroyed without commit(), the temporary is removed.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(std::string_view bytes);
  void write_zeros(uint64_t count);
  uint64_t written() const { return written_; }
  void commit();

 private:
  [[noreturn]] void abandon(const std::string& what, int err);
  std::string path_, target_, dir_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Reads a whole file; throws dha::Error naming the path if it cannot.
std::string read_file(const std::string& path);

// A directory written as a whole: files go into a hidden temporary sibling,
// commit() renames it to the target. Destroyed without commit(), it removes the
// temporary directory, so an interrupted writer leaves nothing behind.
class StagedDirectory {
 public:
  // overwrite=false: throws if `target` exists.
  StagedDirectory(std::string target, bool overwrite);
  ~StagedDirectory();
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  const std::string& path() const { return staging_; }  // write files here
  std::string file(const std::string& name) const { return staging_ + "/" + name; }
  void commit();

 private:
  std::string target_;
  std::string staging_;
  bool overwrite_;
  bool committed_ = false;
};

}  // namespace dha::io
