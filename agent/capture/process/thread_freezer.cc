#include "thread_freezer.h"

#include <elf.h>
#include <sys/procfs.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>
#include <thread>

#include "arch.h"
#include "procfs.h"

namespace mlfx::agent::process {
namespace {

using Clock = std::chrono::steady_clock;

// glibc's ptrace() is variadic on (request, pid, addr, data); keep the casts in one place.
long ptrace_call(int request, pid_t tid, void* addr = nullptr, long data = 0) {
  return ptrace(static_cast<__ptrace_request>(request), tid, addr, reinterpret_cast<void*>(data));
}

// A thread that exited, or is a zombie (which ptrace refuses with EPERM), has nothing to freeze.
bool thread_gone(pid_t pid, pid_t tid) {
  auto text = read_proc_file(task_path(pid, tid, "stat"), 4096);
  if (!text) return true;
  auto st = parse_proc_stat(*text);
  return st && (st->state == 'Z' || st->state == 'X');
}

Result<Bytes> get_regset(pid_t tid, uint32_t type, size_t max_size) {
  Bytes buf(max_size);
  iovec iov{buf.data(), buf.size()};
  if (ptrace_call(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(uintptr_t{type}),
                  reinterpret_cast<long>(&iov)) != 0) {
    int err = errno;
    return fail(err == ESRCH ? Errc::kNotFound : Errc::kIo,
                "PTRACE_GETREGSET " + std::to_string(type) + " of thread " + std::to_string(tid) +
                    ": " + errno_name(err));
  }
  buf.resize(iov.iov_len);
  return buf;
}

// The order threads() promises: the main thread first, then the others by ascending id.
void sort_main_first(std::vector<FrozenThread>& threads, pid_t pid) {
  std::sort(threads.begin(), threads.end(), [pid](const FrozenThread& a, const FrozenThread& b) {
    return (a.tid == pid) != (b.tid == pid) ? a.tid == pid : a.tid < b.tid;
  });
}

}  // namespace

std::string ptrace_refused_advice(pid_t pid) {
  std::string msg = "run mlfx-agent as root or give it CAP_SYS_PTRACE";
  if (auto scope = read_proc_file("/proc/sys/kernel/yama/ptrace_scope", 64)) {
    std::string v = scope->substr(0, scope->find('\n'));
    msg += "; /proc/sys/kernel/yama/ptrace_scope is " + v;
    if (v == "1") msg += " (only descendants may be traced without CAP_SYS_PTRACE)";
    if (v == "2") msg += " (only CAP_SYS_PTRACE may trace)";
    if (v == "3") msg += " (tracing is disabled until reboot)";
  }
  if (auto status = read_proc_file(proc_path(pid, "status"), 1 << 20)) {
    auto tracer = status_field(*status, "TracerPid");
    if (tracer && *tracer != "0")
      msg += "; it is already traced by pid " + *tracer + " (a debugger?), which must detach first";
  }
  return msg;
}

Result<ThreadFreezer> ThreadFreezer::freeze(pid_t pid, Options options) {
  ThreadFreezer f(pid);
  // On failure `f` goes out of scope here and releases what it seized.
  MLFX_TRY(f.seize_all(options));
  return f;
}

ThreadFreezer ThreadFreezer::adopt(pid_t pid, std::vector<FrozenThread> stopped, Release release) {
  ThreadFreezer f(pid);
  f.threads_ = std::move(stopped);
  f.release_ = std::move(release);
  sort_main_first(f.threads_, pid);
  return f;
}

Status ThreadFreezer::seize_all(Options options) {
  const auto deadline = Clock::now() + options.stop_timeout;
  std::set<pid_t> known;
  while (true) {
    MLFX_ASSIGN(std::vector<pid_t> tids, list_threads(pid_));
    bool changed = false;
    for (pid_t tid : tids) {
      if (!known.insert(tid).second) continue;
      changed = true;
      if (ptrace_call(PTRACE_SEIZE, tid) != 0) {
        int err = errno;
        // The thread exited (or is exiting: a zombie cannot be traced) since the listing.
        if (err == ESRCH || (err == EPERM && thread_gone(pid_, tid))) continue;
        if (err == EPERM || err == EACCES)
          return fail(Errc::kPermission, "cannot freeze pid " + std::to_string(pid_) +
                                             ": ptrace refused (" + errno_name(err) + "); " +
                                             ptrace_refused_advice(pid_));
        return fail(Errc::kIo, "PTRACE_SEIZE of thread " + std::to_string(tid) + ": " + errno_name(err));
      }
      FrozenThread t;
      t.tid = tid;
      threads_.push_back(std::move(t));
      if (ptrace_call(PTRACE_INTERRUPT, tid) != 0 && errno != ESRCH)
        return fail(Errc::kIo, "PTRACE_INTERRUPT of thread " + std::to_string(tid) + ": " + errno_name(errno));
    }
    for (auto& t : threads_)
      if (!t.stopped) MLFX_TRY(wait_stopped(t, deadline));
    // Threads that exited while being seized are gone for good.
    std::erase_if(threads_, [](const FrozenThread& t) { return t.tid == 0; });
    if (!changed) break;  // same list twice with every listed thread stopped: stable
    if (Clock::now() >= deadline)
      return fail(Errc::kIo, "pid " + std::to_string(pid_) + " kept creating threads faster than "
                                 "they could be frozen; try again");
  }
  if (threads_.empty())
    return fail(Errc::kNotFound, "process " + std::to_string(pid_) + " exited while being frozen");
  sort_main_first(threads_, pid_);
  return {};
}

// Waits for the stop PTRACE_INTERRUPT causes; records a signal-delivery-stop's signal instead
// of swallowing it. Marks an exited thread with tid 0.
Status ThreadFreezer::wait_stopped(FrozenThread& t, Clock::time_point deadline) {
  while (true) {
    int status = 0;
    pid_t r = waitpid(t.tid, &status, __WALL | WNOHANG);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) {  // not (or no longer) our tracee: it exited
        t.tid = 0;
        return {};
      }
      return fail(Errc::kIo, "waitpid for thread " + std::to_string(t.tid) + ": " + errno_name(errno));
    }
    if (r == t.tid) {
      if (WIFEXITED(status) || WIFSIGNALED(status)) {
        t.tid = 0;
        return {};
      }
      if (WIFSTOPPED(status)) {
        const int event = status >> 16;
        // event PTRACE_EVENT_STOP: our interrupt, or a group-stop (which stays in force after
        // detaching). event 0: signal-delivery-stop; deliver the signal on release.
        if (event == 0) t.pending_signal = WSTOPSIG(status);
        t.stopped = true;
        return {};
      }
      continue;
    }
    if (Clock::now() >= deadline) {
      std::string state = "?";
      if (auto s = read_proc_file(task_path(pid_, t.tid, "stat"), 4096))
        if (auto st = parse_proc_stat(*s)) state = std::string(1, st->state);
      return fail(Errc::kIo, "thread " + std::to_string(t.tid) + " of pid " + std::to_string(pid_) +
                                 " did not stop in time (state " + state +
                                 "; a thread in uninterruptible sleep, D, stops only when its "
                                 "system call returns); try again");
    }
    timespec ts{0, 100'000};  // 100 us
    nanosleep(&ts, nullptr);
  }
}

Status ThreadFreezer::read_registers() {
  const ArchInfo& arch = host_arch();
  for (auto& t : threads_) {
    MLFX_ASSIGN(t.gregs, get_regset(t.tid, NT_PRSTATUS, sizeof(elf_gregset_t) + 64));
    if (t.gregs.size() != sizeof(elf_gregset_t))
      return fail(Errc::kUnsupported,
                  "thread " + std::to_string(t.tid) + " has a " + std::to_string(t.gregs.size()) +
                      "-byte register set, not the " + std::to_string(sizeof(elf_gregset_t)) +
                      " of a native " + arch.name + " process (32-bit processes are not supported)");
    t.regsets.clear();
    for (const RegsetSpec& spec : arch.extra_regsets) {
      auto data = get_regset(t.tid, spec.note_type, spec.max_size);
      if (!data) {
        if (spec.required) return fail(std::move(data).error());
        continue;  // the CPU or kernel lacks this feature
      }
      if (data->empty()) continue;
      t.regsets.push_back({spec.note_type, spec.note_name, std::move(*data)});
    }
  }
  return {};
}

Status ThreadFreezer::thaw() {
  if (release_) {
    Status st = threads_.empty() ? Status{} : release_(threads_);
    threads_.clear();
    return st;
  }
  Status result;
  for (auto& t : threads_) {
    if (!t.stopped) {
      // Seized but not yet stopped (a failed freeze): PTRACE_DETACH needs a stopped tracee,
      // and a tracee left behind would stop at its next signal waiting for us.
      ptrace_call(PTRACE_INTERRUPT, t.tid);
      if (!wait_stopped(t, Clock::now() + std::chrono::seconds(2)) || !t.stopped) {
        if (t.tid != 0 && result)
          result = fail(Errc::kIo, "thread " + std::to_string(t.tid) +
                                       " did not stop to be released; the kernel releases it "
                                       "when this process exits");
        continue;
      }
    }
    if (ptrace_call(PTRACE_DETACH, t.tid, nullptr, t.pending_signal) != 0 && errno != ESRCH &&
        result)
      result = fail(Errc::kIo, "PTRACE_DETACH of thread " + std::to_string(t.tid) + ": " + errno_name(errno));
  }
  threads_.clear();
  return result;
}

ThreadFreezer::ThreadFreezer(ThreadFreezer&& o) noexcept
    : pid_(o.pid_), threads_(std::move(o.threads_)), release_(std::move(o.release_)) {
  o.threads_.clear();
}

ThreadFreezer::~ThreadFreezer() { (void)thaw(); }

}  // namespace mlfx::agent::process
