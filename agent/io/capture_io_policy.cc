#include "io/capture_io_policy.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace mlfx::agent::io {
namespace {

constexpr int kBackgroundNice = 19;

pid_t this_thread_id() { return static_cast<pid_t>(syscall(SYS_gettid)); }

void set_thread_nice(pid_t tid, int nice) { (void)setpriority(PRIO_PROCESS, static_cast<id_t>(tid), nice); }

}  // namespace

void CaptureIoPolicy::set_background(bool background) {
  std::lock_guard lk(mu_);
  background_ = background;
  apply_priority_locked();
}

bool CaptureIoPolicy::low_priority() const {
  std::lock_guard lk(mu_);
  return low_;
}

void CaptureIoPolicy::pipeline_thread_started() {
  std::lock_guard lk(mu_);
  const pid_t tid = this_thread_id();
  threads_.push_back(tid);
  if (low_) set_thread_nice(tid, kBackgroundNice);
}

// A hint: without it (THP off, old kernels) the buffers work, with more page faults.
void CaptureIoPolicy::chunk_buffer_mapped(void* data, size_t size) { (void)madvise(data, size, MADV_HUGEPAGE); }

void CaptureIoPolicy::producer_waiting(bool waiting) {
  std::lock_guard lk(mu_);
  producer_waiting_ = waiting;
  apply_priority_locked();
}

void CaptureIoPolicy::wrote(int fd, uint64_t offset, uint64_t size) { write_behind_.wrote(fd, offset, size); }

// Low while the target is frozen, unless the reader waits for sealing; only on a change.
void CaptureIoPolicy::apply_priority_locked() {
  const bool low = background_ && !producer_waiting_;
  if (low == low_) return;
  low_ = low;
  const int nice = low ? kBackgroundNice : getpriority(PRIO_PROCESS, 0);
  for (pid_t tid : threads_) set_thread_nice(tid, nice);
}

}  // namespace mlfx::agent::io
