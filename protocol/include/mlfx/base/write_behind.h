// Write-behind for a large file written front to back (a bundle being sealed): the disk starts
// writing every 16 MiB as soon as it is written (sync_file_range), and a thread of its own
// fdatasyncs every 128 MiB while writing goes on, so the disk, and a write cache under it,
// takes the data as it comes and the fsync that ends the file has little left. Measured here
// (a VM whose virtual disk caches writes): the final fsync of a GiB took 0.5-0.7 s without the
// periodic sync, with or without sync_file_range, and about 0.05 s with it.
//
// A mechanism only: whether to use it is the program's policy (the agent's and the lab's
// sealing policies do).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>

#include "mlfx/base/file.h"
#include "mlfx/base/result.h"

namespace mlfx {

class WriteBehind {
 public:
  WriteBehind() = default;
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;
  ~WriteBehind() { (void)stop(); }

  // Bytes [offset, offset + size) of the file open as `fd` were written (always one file, in
  // file order, one caller at a time).
  void wrote(int fd, uint64_t offset, uint64_t size);
  // Waits for a sync in progress and stops syncing; returns the first error a sync met. The
  // writer's own fsync reports such an error too: the syncs use a descriptor of their own.
  Status stop();

 private:
  void sync_loop();

  static constexpr uint64_t kWritebackStep = 16u << 20;
  static constexpr uint64_t kSyncStep = 128u << 20;
  uint64_t writeback_from_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t unsynced_ = 0;
  bool stopping_ = false;
  File own_;  // the file again, opened through /proc/self/fd
  std::thread syncer_;
  std::optional<Error> error_;
};

}  // namespace mlfx
