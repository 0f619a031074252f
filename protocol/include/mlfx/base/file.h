// File descriptors with RAII and Result-returning I/O.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>

#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx {

// Where bytes seen through a mapping also lie in an open file. Bulk copies pread them from
// there: first touches of a mapping take a page fault every few pages, which made writing an
// export straight from the mapped evidence four times slower than pread + write here.
struct FilePlace {
  int fd = -1;  // -1: nowhere known
  uint64_t offset = 0;
};

class File {
 public:
  File() = default;
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  File(File&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  File& operator=(File&& o) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  static Result<File> open_read(const std::string& path);
  // Creates a new file; fails with Errc::kExists rather than replacing one.
  static Result<File> create_new(const std::string& path, mode_t mode);
  // An anonymous file in memory (memfd): plaintext that must not reach a disk. Its path,
  // "/proc/self/fd/N", opens it again.
  static Result<File> create_memory(const std::string& name);
  // Wraps standard input; "-" is its name in messages.
  static File standard_input();

  // Reads until `len` bytes or end of file; returns the count read.
  Result<size_t> read_full(uint8_t* buf, size_t len);
  Status pread_exact(uint64_t offset, uint8_t* buf, size_t len) const;
  Status write_all(ByteView data);
  Status pwrite_all(uint64_t offset, ByteView data);
  Result<uint64_t> size() const;
  Status sync();
  Status close();

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  bool is_open() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
  std::string path_;
};

// Reads a whole (small) file, refusing anything larger than max_size.
Result<std::string> read_small_file(const std::string& path, size_t max_size);
// Writes a new file (never replacing one) and fsyncs it.
Status write_new_file(const std::string& path, std::string_view data, mode_t mode);

// Replaces `path` so that a reader sees the old or the new file, never a torn one (a synced
// temporary file in the same directory, renamed over it, then the directory synced).
Status replace_file(const std::string& path, std::string_view data, mode_t mode);
Status fsync_dir(const std::string& dir);

// Creates the output directory of a command, or accepts an existing one unless it already
// holds one of `owned` (the names that command writes): outputs are never overwritten.
Status make_output_dir(const std::string& dir, std::initializer_list<const char*> owned);

// An exclusive flock on a directory, held until destruction: serialises changes to it between
// processes. Fails with kNotFound when the directory does not exist.
class DirLock {
 public:
  static Result<DirLock> acquire(const std::string& dir);
  // Like acquire, but fails with kExists at once when another process holds the lock.
  static Result<DirLock> try_acquire(const std::string& dir);
  DirLock(DirLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  DirLock& operator=(DirLock&&) = delete;
  ~DirLock();

 private:
  explicit DirLock(int fd) : fd_(fd) {}
  int fd_;
};

// Undoes a half-done output (removes an incomplete bundle) when it goes out of scope, unless
// the work was committed: a failure never leaves a file that looks valid.
class Rollback {
 public:
  explicit Rollback(std::function<void()> undo) : undo_(std::move(undo)) {}
  Rollback(const Rollback&) = delete;
  Rollback& operator=(const Rollback&) = delete;
  ~Rollback() {
    if (undo_) undo_();
  }
  void commit() { undo_ = nullptr; }

 private:
  std::function<void()> undo_;
};

// A Rollback that removes `path`.
Rollback remove_unless_committed(const std::string& path);

// Opens an output named on a command line: "-" is standard output, "/dev/fd/N" a descriptor
// the caller handed over, anything else a new file (never replacing one).
Result<File> open_output(const std::string& path, mode_t mode);

std::string errno_text(int err);

}  // namespace mlfx
