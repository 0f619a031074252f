#include "mlfx/base/write_behind.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace mlfx {

void WriteBehind::wrote(int fd, uint64_t offset, uint64_t size) {
  const uint64_t end = offset + size;
  if (end - writeback_from_ >= kWritebackStep) {  // a hint: pipes and some file systems refuse it
    (void)sync_file_range(fd, static_cast<off_t>(writeback_from_), static_cast<off_t>(end - writeback_from_),
                          SYNC_FILE_RANGE_WRITE);
    writeback_from_ = end;
  }
  std::lock_guard lock(mu_);
  if (stopping_) return;
  if (!own_.is_open()) {
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      stopping_ = true;  // a pipe or a device: nothing to sync
      return;
    }
    // A new open file description, not a dup: an error this fdatasync consumes is still
    // reported to the writer's fsync on its own descriptor.
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    const int own = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (own < 0) {
      stopping_ = true;  // no /proc: the final fsync does all the work, as without write-behind
      return;
    }
    own_ = File(own, path);
    syncer_ = std::thread([this] { sync_loop(); });
  }
  unsynced_ += size;
  if (unsynced_ >= kSyncStep) cv_.notify_one();
}

void WriteBehind::sync_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || unsynced_ >= kSyncStep; });
    if (stopping_) return;
    unsynced_ = 0;
    lock.unlock();
    const int rc = ::fdatasync(own_.fd());
    const int err = errno;
    lock.lock();
    if (rc != 0 && !error_) error_ = Error(Errc::kIo, "cannot sync the file being written: " + errno_text(err));
  }
}

Status WriteBehind::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (syncer_.joinable()) syncer_.join();
  (void)own_.close();
  if (error_) return fail(*error_);
  return {};
}

}  // namespace mlfx
