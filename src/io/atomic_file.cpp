// Atomic file and directory writes (temporary sibling + fsync + rename) and a
// whole-file reader; every failure becomes a one-line dha::Error naming the path.
#include "dha/io/atomic_file.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <system_error>

#include "dha/error.h"

namespace dha::io {
namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// pid + random hex: unique among concurrent writers on this host, and the pid
// tells a human which process left a stray temporary behind after a crash.
std::string unique_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          (static_cast<uint64_t>(::getpid()) << 32)};
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%ld-%012llx", static_cast<long>(::getpid()),
                static_cast<unsigned long long>(rng() & 0xffffffffffffULL));
  return buf;
}

// "a/b/" and "a/b" name the same directory; the trailing slash would make
// filename() empty and break the sibling naming.
std::string strip_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

std::string parent_dir(const std::string& path) {
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? std::string(".") : parent;
}

std::string basename_of(const std::string& path) { return fs::path(path).filename().string(); }

// Makes a rename/create inside `dir` durable; without it a crash can lose the
// new directory entry even though the file data itself was synced.
void fsync_directory(const std::string& dir, const std::string& context) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(context, ": cannot open directory ", dir, " to sync it: ", errno_text(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some filesystems do not support fsync on directories; that is not a write failure.
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    fail(context, ": cannot sync directory ", dir, ": ", errno_text(err));
}

void fsync_file(const std::string& path, const std::string& context) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(context, ": cannot open ", path, " to sync it: ", errno_text(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    fail(context, ": cannot sync ", path, ": ", errno_text(err));
}

// Syncs every file and directory under `dir` (depth first), so a committed
// staging directory is complete on disk whoever wrote into it.
void fsync_tree(const std::string& dir, const std::string& context) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_regular_file(st)) fsync_file(it->path().string(), context);
    else if (fs::is_directory(st)) fsync_directory(it->path().string(), context);
  }
  if (ec) fail(context, ": cannot list ", dir, ": ", ec.message());
  fsync_directory(dir, context);
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  ::remove(path);  // best effort: keep going so as much as possible is removed
  return 0;
}

// Deletes a file or directory tree without following symlinks. Not
// std::filesystem::remove_all: the LibTorch wheel exports its own copy of that
// symbol, which can shadow libstdc++'s and crashes when called.
void remove_tree(const std::string& path) {
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(const std::string& path)
    : path_(path), target_(strip_trailing_slashes(path)), dir_(parent_dir(target_)) {
  tmp_ = dir_ + "/." + basename_of(target_) + ".tmp-" + unique_suffix();
  // O_EXCL: never clobber someone else's temporary that happens to share the name.
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    int err = errno;
    if (err == ENOENT)
      fail(path, ": cannot write: directory ", dir_, " does not exist (expected an existing directory)");
    fail(path, ": cannot create temporary file ", tmp_, ": ", errno_text(err));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFileWriter::abandon(const std::string& what, int err) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  fail(path_, ": ", what, ": ", errno_text(err));
}

void AtomicFileWriter::write(std::string_view bytes) {
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      abandon("write failed after " + std::to_string(written_ + bytes.size() - left) + " bytes", err);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  written_ += bytes.size();
}

void AtomicFileWriter::write_zeros(uint64_t count) {
  static const char zeros[4096] = {};
  while (count > 0) {
    const uint64_t n = std::min<uint64_t>(count, sizeof(zeros));
    write(std::string_view(zeros, n));
    count -= n;
  }
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_) != 0) abandon("fsync failed", errno);
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) abandon("close failed", errno);
  if (::rename(tmp_.c_str(), target_.c_str()) != 0) abandon("cannot rename " + tmp_ + " into place", errno);
  committed_ = true;
  fsync_directory(dir_, path_);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFileWriter out(path);
  out.write(bytes);
  out.commit();
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open for reading: ", errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file (expected a file to read)");
  }
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      fail(path, ": read failed: ", errno_text(err));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

StagedDirectory::StagedDirectory(std::string target, bool overwrite)
    : target_(strip_trailing_slashes(std::move(target))), overwrite_(overwrite) {
  if (target_.empty()) fail("(empty path): expected an output directory path");
  std::error_code ec;
  // symlink_status: a dangling symlink at the target still counts as "exists".
  bool exists = fs::exists(fs::symlink_status(target_, ec));
  if (exists && !overwrite_) fail(target_, ": already exists (pass --force to overwrite)");

  const std::string dir = parent_dir(target_);
  staging_ = dir + "/." + basename_of(target_) + ".staging-" + unique_suffix();
  if (::mkdir(staging_.c_str(), 0755) != 0) {
    int err = errno;
    if (err == ENOENT)
      fail(target_, ": cannot create output directory: parent directory ", dir,
           " does not exist (expected an existing directory)");
    fail(target_, ": cannot create staging directory ", staging_, ": ", errno_text(err));
  }
}

StagedDirectory::~StagedDirectory() {
  if (committed_ || staging_.empty()) return;
  remove_tree(staging_);  // best effort: destructors must not throw
}

void StagedDirectory::commit() {
  if (committed_) fail(target_, ": staged directory already committed");
  fsync_tree(staging_, target_);
  const std::string dir = parent_dir(target_);

  std::error_code ec;
  bool exists = fs::exists(fs::symlink_status(target_, ec));
  if (exists && !overwrite_) fail(target_, ": already exists (pass --force to overwrite)");

  std::string old;
  if (exists) {
    // Move the old target aside rather than deleting it first: if the swap
    // fails we can put it back, and the gap with no target is two renames long.
    old = dir + "/." + basename_of(target_) + ".old-" + unique_suffix();
    if (::rename(target_.c_str(), old.c_str()) != 0)
      fail(target_, ": cannot move the existing target aside to ", old, ": ", errno_text(errno));
  }
  if (::rename(staging_.c_str(), target_.c_str()) != 0) {
    int err = errno;
    if (!old.empty()) ::rename(old.c_str(), target_.c_str());
    fail(target_, ": cannot rename staging directory ", staging_, " into place: ", errno_text(err));
  }
  committed_ = true;
  fsync_directory(dir, target_);
  if (!old.empty()) {
    // The new target is in place; failing to delete the old copy is not worth
    // an error that would suggest the write failed.
    remove_tree(old);
  }
}

}  // namespace dha::io
