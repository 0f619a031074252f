// SHA-256 of a file on a thread of its own: the caller hands it ranges in file order as they
// become final, and the thread reads them back (from the page cache) and hashes them. The
// intake thus checks each record and the whole file without a second pass on its own thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "mlfx/base/result.h"

namespace mlfx::intake {

class BackgroundHash {
 public:
  // `fd` must stay open until finish() or destruction.
  static Result<std::unique_ptr<BackgroundHash>> start(int fd);
  ~BackgroundHash();

  // The next bytes of the file, directly after the previous range.
  void add(uint64_t offset, uint64_t size);
  // Waits for the queued ranges; the hex digest of everything added.
  Result<std::string> finish();

 private:
  explicit BackgroundHash(int fd) : fd_(fd) {}
  void run();

  int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, uint64_t>> ranges_;
  bool closing_ = false;
  std::string digest_;
  std::optional<Error> error_;
  std::thread thread_;
};

}  // namespace mlfx::intake
