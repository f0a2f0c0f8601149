// Tests for atomic file writes, whole-file reads and staged (all-or-nothing) directories.
#include <filesystem>
#include <set>
#include <string>

#include "dha/error.h"
#include "dha/io/atomic_file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using dha::test::expect_one_line_error;

namespace {

// Everything directly inside `dir`, hidden entries included: leftovers show up here.
std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

}  // namespace

TEST(AtomicFile, WriteThenReadBack) {
  dha::test::TempDir dir;
  const std::string path = dir.file("data.bin");
  const std::string first("binary\0with\0nuls\xff", 17);
  dha::io::write_file_atomic(path, first);
  EXPECT_EQ(dha::io::read_file(path), first);

  // Replacing an existing file works the same way and leaves no temporary behind.
  dha::io::write_file_atomic(path, "second");
  EXPECT_EQ(dha::io::read_file(path), "second");
  dha::io::write_file_atomic(dir.file("empty"), "");
  EXPECT_EQ(dha::io::read_file(dir.file("empty")), "");
  EXPECT_EQ(listing(dir.path()), (std::set<std::string>{"data.bin", "empty"}));
}

TEST(AtomicFile, WriteIntoMissingDirectoryThrowsAndLeavesNothing) {
  dha::test::TempDir dir;
  const std::string path = dir.file("no/such/dir/file.txt");
  expect_one_line_error([&] { dha::io::write_file_atomic(path, "x"); }, {path, "does not exist"});
  EXPECT_TRUE(listing(dir.path()).empty());
}

TEST(AtomicFile, ReadMissingFileThrows) {
  dha::test::TempDir dir;
  const std::string path = dir.file("missing.txt");
  expect_one_line_error([&] { dha::io::read_file(path); }, {path, "cannot open"});
}

TEST(AtomicFile, ReadDirectoryThrows) {
  dha::test::TempDir dir;
  expect_one_line_error([&] { dha::io::read_file(dir.path()); }, {dir.path(), "not a regular file"});
}

TEST(StagedDirectory, CommitProducesTargetWithoutLeftovers) {
  dha::test::TempDir dir;
  const std::string target = dir.file("model");
  {
    dha::io::StagedDirectory staged(target, /*overwrite=*/false);
    const std::string staging_name = fs::path(staged.path()).filename().string();
    EXPECT_EQ(staging_name.rfind(".model.staging-", 0), 0u) << staging_name;
    EXPECT_EQ(fs::path(staged.path()).parent_path(), fs::path(dir.path()));
    dha::io::write_file_atomic(staged.file("config.json"), "{}");
    fs::create_directory(staged.file("sub"));
    dha::io::write_file_atomic(staged.file("sub/weights.bin"), "abc");
    EXPECT_FALSE(fs::exists(target));  // nothing visible before commit
    staged.commit();
  }
  EXPECT_EQ(dha::io::read_file(target + "/config.json"), "{}");
  EXPECT_EQ(dha::io::read_file(target + "/sub/weights.bin"), "abc");
  EXPECT_EQ(listing(dir.path()), (std::set<std::string>{"model"}));
}

TEST(StagedDirectory, DestructionWithoutCommitLeavesNothing) {
  dha::test::TempDir dir;
  const std::string target = dir.file("model");
  {
    dha::io::StagedDirectory staged(target, false);
    dha::io::write_file_atomic(staged.file("partial.bin"), "half");
    EXPECT_TRUE(fs::is_directory(staged.path()));
  }
  EXPECT_FALSE(fs::exists(target));
  EXPECT_TRUE(listing(dir.path()).empty());
}

TEST(StagedDirectory, ExistingTargetWithoutOverwriteThrows) {
  dha::test::TempDir dir;
  const std::string target = dir.file("model");
  fs::create_directory(target);
  dha::io::write_file_atomic(target + "/keep.txt", "old");
  expect_one_line_error([&] { dha::io::StagedDirectory staged(target, false); },
               {target + ": already exists (pass --force to overwrite)"});
  EXPECT_EQ(dha::io::read_file(target + "/keep.txt"), "old");
  EXPECT_EQ(listing(dir.path()), (std::set<std::string>{"model"}));
}

TEST(StagedDirectory, OverwriteReplacesExistingTarget) {
  dha::test::TempDir dir;
  const std::string target = dir.file("model");
  fs::create_directory(target);
  dha::io::write_file_atomic(target + "/old.txt", "old");
  {
    dha::io::StagedDirectory staged(target, /*overwrite=*/true);
    dha::io::write_file_atomic(staged.file("new.txt"), "new");
    EXPECT_EQ(dha::io::read_file(target + "/old.txt"), "old");  // untouched until commit
    staged.commit();
  }
  EXPECT_FALSE(fs::exists(target + "/old.txt"));
  EXPECT_EQ(dha::io::read_file(target + "/new.txt"), "new");
  EXPECT_EQ(listing(dir.path()), (std::set<std::string>{"model"}));
}

TEST(StagedDirectory, TrailingSlashNamesTheSameTarget) {
  dha::test::TempDir dir;
  {
    dha::io::StagedDirectory staged(dir.file("model/"), false);
    dha::io::write_file_atomic(staged.file("a"), "1");
    staged.commit();
  }
  EXPECT_EQ(dha::io::read_file(dir.file("model/a")), "1");
  EXPECT_EQ(listing(dir.path()), (std::set<std::string>{"model"}));
}

TEST(StagedDirectory, MissingParentThrows) {
  dha::test::TempDir dir;
  const std::string target = dir.file("no/such/model");
  expect_one_line_error([&] { dha::io::StagedDirectory staged(target, false); }, {target, "does not exist"});
  EXPECT_TRUE(listing(dir.path()).empty());
}
