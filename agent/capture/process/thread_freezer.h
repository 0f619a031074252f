// Freezes every thread of a process with PTRACE_SEIZE + PTRACE_INTERRUPT and thaws it again.
//
// SEIZE (unlike ATTACH) sends no SIGSTOP: if the agent dies, the kernel detaches and the
// target simply runs on. Threads created while seizing are caught by listing /proc/PID/task
// again until the list is stable with every thread stopped (a stopped thread cannot clone).
// The destructor always detaches, on every path.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::process {

struct RegsetNote {
  uint32_t note_type;
  const char* note_name;
  Bytes data;
};

struct FrozenThread {
  pid_t tid = 0;
  // A signal the thread was about to receive when it stopped (signal-delivery-stop); it is
  // delivered when the thread is released, so the target sees nothing missing.
  int pending_signal = 0;
  bool stopped = false;
  Bytes gregs;                       // NT_PRSTATUS register set (elf_gregset_t)
  std::vector<RegsetNote> regsets;   // host_arch().extra_regsets that the thread has
};

class ThreadFreezer {
 public:
  struct Options {
    // A thread in uninterruptible sleep (D) stops only when it returns to user space.
    std::chrono::milliseconds stop_timeout{10'000};
  };

  // Stops every thread of `pid`. kNotFound if the process is gone, kPermission if ptrace is
  // refused (the message says what to do).
  static Result<ThreadFreezer> freeze(pid_t pid, Options options);

  // Threads that the caller already traces and has stopped (the daemon's holder of armed
  // targets, daemon/ptrace_holder.h). Registers are read the same way (from the caller's
  // thread: the tracer's); thaw() hands them back to `release` instead of detaching.
  using Release = std::function<Status(std::vector<FrozenThread>&)>;
  static ThreadFreezer adopt(pid_t pid, std::vector<FrozenThread> stopped, Release release);

  ThreadFreezer(ThreadFreezer&& o) noexcept;
  ThreadFreezer& operator=(ThreadFreezer&&) = delete;
  ThreadFreezer(const ThreadFreezer&) = delete;
  ~ThreadFreezer();

  // PTRACE_GETREGSET for every stopped thread: NT_PRSTATUS and the arch table's sets.
  Status read_registers();

  // Releases every thread (PTRACE_DETACH, re-delivering pending signals). Idempotent.
  Status thaw();

  pid_t pid() const { return pid_; }
  // Main thread first, then the others by ascending id.
  const std::vector<FrozenThread>& threads() const { return threads_; }

 private:
  explicit ThreadFreezer(pid_t pid) : pid_(pid) {}
  Status seize_all(Options options);
  Status wait_stopped(FrozenThread& t, std::chrono::steady_clock::time_point deadline);

  pid_t pid_ = 0;
  std::vector<FrozenThread> threads_;
  Release release_;  // adopted threads: how to hand them back
};

// The message for a refused PTRACE_SEIZE: who may trace, and how to get there.
std::string ptrace_refused_advice(pid_t pid);

}  // namespace mlfx::agent::process
