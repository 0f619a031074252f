#include "daemon/ptrace_holder.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <future>

#include "capture/process/procfs.h"

namespace mlfx::agent::daemon {
namespace {

using process::errno_name;

constexpr int64_t kStopTimeoutNs = 10'000'000'000;  // a thread in D state stops when its call returns
constexpr long kSeizeOptions = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC;

long ptrace_call(int request, pid_t tid, void* addr = nullptr, long data = 0) {
  return ptrace(static_cast<__ptrace_request>(request), tid, addr, reinterpret_cast<void*>(data));
}

bool group_stop_signal(int sig) { return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU; }

// The thread group of `tid`, from /proc (for threads the holder has not been told about yet).
pid_t tgid_of(pid_t tid) {
  auto status = process::read_proc_file("/proc/" + std::to_string(tid) + "/status", 1 << 16);
  if (!status) return 0;
  auto tgid = process::status_field(*status, "Tgid");
  return tgid ? static_cast<pid_t>(std::stol(*tgid)) : 0;
}

// Whether the process has a handler for `sig` (then the signal does not kill it by itself).
bool catches(pid_t pid, int sig) {
  auto status = process::read_proc_file(process::proc_path(pid, "status"), 1 << 16);
  if (!status) return false;
  auto mask = process::status_field(*status, "SigCgt");
  return mask && (std::stoull(*mask, nullptr, 16) >> (sig - 1)) & 1;
}

}  // namespace

struct PtraceHolder::Thread {
  bool stopped = false;     // in a ptrace stop the holder has not ended
  bool group_stop = false;  // the stop is a group-stop (SIGSTOP & co.): resumed with LISTEN
  int pending_signal = 0;   // to deliver on resuming (0: none)
};

struct PtraceHolder::Process {
  pid_t pid = 0;
  std::set<int> signals;  // the fatal signals it is held for
  std::map<pid_t, Thread> threads;
  bool stopping = false;  // being stopped, or stopped, for a capture
};

process::ThreadFreezer PtraceHolder::Stopped::freezer() const {
  return process::ThreadFreezer::adopt(pid_, threads_, [resume = resume_](std::vector<process::FrozenThread>&) {
    if (resume) resume();
    return Status{};
  });
}

Result<std::unique_ptr<PtraceHolder>> PtraceHolder::start(OnFatal on_fatal, OnGone on_gone) {
  std::unique_ptr<PtraceHolder> h(new PtraceHolder(std::move(on_fatal), std::move(on_gone)));
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  h->sigchld_fd_ = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
  h->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (h->sigchld_fd_ < 0 || h->wake_fd_ < 0)
    return fail(Errc::kIo, std::string("signalfd/eventfd for the ptrace holder: ") + errno_name(errno));
  h->thread_ = std::thread([p = h.get()] { p->loop(); });
  return h;
}

PtraceHolder::PtraceHolder(OnFatal on_fatal, OnGone on_gone)
    : on_fatal_(std::move(on_fatal)), on_gone_(std::move(on_gone)) {}

PtraceHolder::~PtraceHolder() {
  if (thread_.joinable()) {
    post([this](Jobs&) { quit_ = true; });
    thread_.join();
  }
  if (sigchld_fd_ >= 0) ::close(sigchld_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void PtraceHolder::post(Job job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

size_t PtraceHolder::queued() const {
  std::lock_guard lock(mu_);
  return jobs_.size();
}

std::vector<pid_t> PtraceHolder::held() const {
  std::lock_guard lock(mu_);
  return held_pids_;
}

Status PtraceHolder::hold(pid_t pid, std::set<int> signals) {
  auto done = std::make_shared<std::promise<Status>>();
  auto result = done->get_future();
  post([this, pid, signals = std::move(signals), done](Jobs&) { done->set_value(seize(pid, signals)); });
  return result.get();
}

Status PtraceHolder::release(pid_t pid) {
  auto done = std::make_shared<std::promise<Status>>();
  auto result = done->get_future();
  post([this, pid, done](Jobs&) { done->set_value(detach(pid)); });
  return result.get();
}

bool PtraceHolder::Jobs::held(pid_t pid) const { return h_.processes_.count(pid) != 0; }

Result<process::ThreadFreezer> PtraceHolder::Jobs::freeze(pid_t pid) {
  auto it = h_.processes_.find(pid);
  if (it == h_.processes_.end()) return fail(Errc::kNotFound, "pid " + std::to_string(pid) + " is not held");
  if (auto st = h_.stop_all(*it->second, monotonic_ns() + kStopTimeoutNs); !st) {
    resume(pid);
    return fail(std::move(st).error());
  }
  Stopped stopped = h_.stopped_view(*it->second);
  stopped.resume_ = [this, pid] { resume(pid); };  // on the holder thread (a capture's thaw)
  return stopped.freezer();
}

void PtraceHolder::Jobs::resume(pid_t pid) {
  // The process may have died meanwhile (SIGKILL): then there is nothing left to resume.
  if (auto it = h_.processes_.find(pid); it != h_.processes_.end()) h_.resume_all(*it->second, false);
}

Status PtraceHolder::Jobs::with_stopped(pid_t pid, const std::function<void(const Stopped&)>& fn) {
  auto it = h_.processes_.find(pid);
  if (it == h_.processes_.end()) return fail(Errc::kNotFound, "pid " + std::to_string(pid) + " is not held");
  Status st = h_.stop_all(*it->second, monotonic_ns() + kStopTimeoutNs);
  if (st) fn(h_.stopped_view(*h_.processes_.at(pid)));
  resume(pid);
  return st;
}

void PtraceHolder::loop() {
  pollfd fds[2] = {{sigchld_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (!quit_) {
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
    signalfd_siginfo si;
    while (::read(sigchld_fd_, &si, sizeof si) == sizeof si) {
    }
    uint64_t n;
    (void)!::read(wake_fd_, &n, sizeof n);
    drain_waits();
    run_queued();
  }
  while (!processes_.empty()) (void)detach(processes_.begin()->first);
}

void PtraceHolder::run_queued() {
  while (true) {
    // Fatal signals that came while the holder was busy go first: their process is stopped.
    while (!fatal_later_.empty()) {
      auto [tid, sig] = fatal_later_.front();
      fatal_later_.erase(fatal_later_.begin());
      if (Process* p = process_of(tid)) handle_fatal(*p, tid, sig);
    }
    Job job;
    {
      std::lock_guard lock(mu_);
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.erase(jobs_.begin());
    }
    Jobs jobs(*this);
    job(jobs);
    drain_waits();
  }
}

void PtraceHolder::drain_waits() {
  int status = 0;
  pid_t tid;
  while ((tid = waitpid(-1, &status, __WALL | __WNOTHREAD | WNOHANG)) > 0) on_wait(tid, status);
}

PtraceHolder::Process* PtraceHolder::process_of(pid_t tid) {
  auto it = tid_to_pid_.find(tid);
  pid_t pid = it != tid_to_pid_.end() ? it->second : tgid_of(tid);
  auto p = processes_.find(pid);
  if (p == processes_.end()) return nullptr;
  if (it == tid_to_pid_.end()) {  // a new thread, auto-attached at its clone
    tid_to_pid_[tid] = pid;
    p->second->threads[tid];
  }
  return p->second.get();
}

bool PtraceHolder::fatal_for(const Process& p, int sig) const {
  return p.signals.count(sig) && !catches(p.pid, sig);
}

void PtraceHolder::on_wait(pid_t tid, int status) {
  Process* p = process_of(tid);
  if (!p) {  // not a held process (anymore): let it go as it was
    if (WIFSTOPPED(status)) ptrace_call(PTRACE_DETACH, tid, nullptr, (status >> 16) ? 0 : WSTOPSIG(status));
    return;
  }
  if (WIFEXITED(status) || WIFSIGNALED(status)) {
    p->threads.erase(tid);
    tid_to_pid_.erase(tid);
    if (p->threads.empty()) {
      const pid_t pid = p->pid;
      std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                          : "killed by signal " + std::to_string(WTERMSIG(status));
      processes_.erase(pid);
      {
        std::lock_guard lock(mu_);
        std::erase(held_pids_, pid);
      }
      if (on_gone_) on_gone_(pid, how);
    }
    return;
  }
  if (!WIFSTOPPED(status)) return;
  Thread& t = p->threads[tid];
  const int sig = WSTOPSIG(status);
  const int event = status >> 16;
  auto stop_or_continue = [&](int deliver) {
    if (p->stopping) {
      t.stopped = true;
      t.pending_signal = deliver;
    } else {
      ptrace_call(PTRACE_CONT, tid, nullptr, deliver);
    }
  };
  switch (event) {
    case PTRACE_EVENT_CLONE: {
      unsigned long child = 0;
      if (ptrace_call(PTRACE_GETEVENTMSG, tid, nullptr, reinterpret_cast<long>(&child)) == 0 && child) {
        tid_to_pid_[static_cast<pid_t>(child)] = p->pid;
        p->threads[static_cast<pid_t>(child)];  // reports its own first stop
      }
      stop_or_continue(0);
      return;
    }
    case PTRACE_EVENT_EXEC: {
      // Every other thread is gone; the one that exec'd now has the process's id.
      for (auto it = p->threads.begin(); it != p->threads.end();)
        if (it->first != p->pid) {
          tid_to_pid_.erase(it->first);
          it = p->threads.erase(it);
        } else {
          ++it;
        }
      p->threads[p->pid];
      tid_to_pid_[p->pid] = p->pid;
      Thread& leader = p->threads[p->pid];
      if (p->stopping) {
        leader.stopped = true;
      } else {
        ptrace_call(PTRACE_CONT, tid, nullptr, 0);
      }
      return;
    }
    case PTRACE_EVENT_STOP:
      if (group_stop_signal(sig)) {  // stopped by job control: stays stopped, as untraced
        t.group_stop = true;
        if (p->stopping) t.stopped = true;
        else ptrace_call(PTRACE_LISTEN, tid, nullptr, 0);
      } else {  // our interrupt, or a new thread's first stop
        t.group_stop = false;
        stop_or_continue(0);
      }
      return;
    case 0:  // signal-delivery-stop
      if (fatal_for(*p, sig)) {
        t.stopped = true;  // the fatal signal waits until the capture is done
        t.pending_signal = sig;
        if (p->stopping) return;  // resume_all leaves it stopped and defers it
        fatal_later_.emplace_back(tid, sig);
        return;
      }
      stop_or_continue(sig);
      return;
    default:
      stop_or_continue(0);
  }
}

void PtraceHolder::handle_fatal(Process& p, pid_t tid, int sig) {
  FatalSignal f;
  f.pid = p.pid;
  f.tid = tid;
  f.signal = sig;
  f.stopped_ns = monotonic_ns();
  siginfo_t info{};
  if (ptrace_call(PTRACE_GETSIGINFO, tid, nullptr, reinterpret_cast<long>(&info)) == 0) {
    f.si_code = info.si_code;
    if (info.si_code <= 0) f.sender = info.si_pid;
    else f.fault_address = reinterpret_cast<uint64_t>(info.si_addr);
  }
  const pid_t pid = p.pid;
  if (stop_all(p, monotonic_ns() + kStopTimeoutNs)) {
    f.frozen_ns = monotonic_ns();
    if (on_fatal_) on_fatal_(f, stopped_view(p));
  }
  // The signal takes its course now, whatever the capture did: the process dies of it.
  if (auto it = processes_.find(pid); it != processes_.end()) resume_all(*it->second, true);
}

Status PtraceHolder::stop_all(Process& p, int64_t deadline_ns) {
  p.stopping = true;
  const pid_t pid = p.pid;
  for (auto& [tid, t] : p.threads)
    if (!t.stopped && ptrace_call(PTRACE_INTERRUPT, tid) != 0 && errno != ESRCH)
      return fail(Errc::kIo, "PTRACE_INTERRUPT of thread " + std::to_string(tid) + ": " + errno_name(errno));
  while (true) {
    auto it = processes_.find(pid);
    if (it == processes_.end()) return fail(Errc::kNotFound, "pid " + std::to_string(pid) + " exited while being stopped");
    pid_t waiting_for = 0;
    for (auto& [tid, t] : it->second->threads)
      if (!t.stopped) waiting_for = tid;
    if (!waiting_for) return {};
    int status = 0;
    pid_t r = waitpid(-1, &status, __WALL | __WNOTHREAD | WNOHANG);
    if (r > 0) {
      const bool fresh = !tid_to_pid_.count(r);
      on_wait(r, status);
      // A thread born while stopping: its first stop counts; interrupt ones that were running.
      if (fresh && processes_.count(pid)) {
        auto& threads = processes_[pid]->threads;
        if (auto t = threads.find(r); t != threads.end() && !t->second.stopped) ptrace_call(PTRACE_INTERRUPT, r);
      }
      continue;
    }
    const int64_t left_ns = deadline_ns - monotonic_ns();
    if (left_ns <= 0) {
      std::string state = "?";
      if (auto s = process::read_proc_file(process::task_path(pid, waiting_for, "stat"), 4096))
        if (auto st = process::parse_proc_stat(*s)) state = std::string(1, st->state);
      return fail(Errc::kIo, "thread " + std::to_string(waiting_for) + " of pid " + std::to_string(pid) +
                                 " did not stop in time (state " + state + ")");
    }
    pollfd fd{sigchld_fd_, POLLIN, 0};
    ::poll(&fd, 1, static_cast<int>(std::min<int64_t>(left_ns / 1'000'000 + 1, 100)));
    signalfd_siginfo si;
    while (::read(sigchld_fd_, &si, sizeof si) == sizeof si) {
    }
  }
}

void PtraceHolder::resume_all(Process& p, bool deliver_fatal) {
  for (auto& [tid, t] : p.threads) {
    if (!t.stopped) continue;
    if (!deliver_fatal && t.pending_signal && fatal_for(p, t.pending_signal)) {
      // A fatal signal that came during a job: the thread stays stopped; it is handled next.
      bool queued = false;
      for (const auto& f : fatal_later_) queued = queued || f.first == tid;
      if (!queued) fatal_later_.emplace_back(tid, t.pending_signal);
      continue;
    }
    // ESRCH: it died meanwhile (SIGKILL); its exit is reported to the holder.
    if (t.group_stop) ptrace_call(PTRACE_LISTEN, tid, nullptr, 0);
    else ptrace_call(PTRACE_CONT, tid, nullptr, t.pending_signal);
    t.stopped = false;
    t.pending_signal = 0;
  }
  p.stopping = false;
}

PtraceHolder::Stopped PtraceHolder::stopped_view(const Process& p) const {
  Stopped s;
  s.pid_ = p.pid;
  for (const auto& [tid, t] : p.threads) {
    process::FrozenThread f;
    f.tid = tid;
    f.stopped = t.stopped;
    f.pending_signal = t.pending_signal;
    s.threads_.push_back(std::move(f));
  }
  return s;
}

Status PtraceHolder::seize(pid_t pid, std::set<int> signals) {
  if (auto it = processes_.find(pid); it != processes_.end()) {
    it->second->signals = std::move(signals);
    return {};
  }
  if (pid == getpid()) return fail(Errc::kInvalidArgument, "mlfx-agent cannot hold itself");
  auto owned = std::make_unique<Process>();
  Process& p = *owned;
  p.pid = pid;
  p.signals = std::move(signals);
  processes_[pid] = std::move(owned);
  const int64_t deadline = monotonic_ns() + kStopTimeoutNs;
  while (true) {
    auto tids = process::list_threads(pid);
    if (!tids) {
      processes_.erase(pid);
      return fail(std::move(tids).error());
    }
    bool changed = false;
    for (pid_t tid : *tids) {
      if (p.threads.count(tid)) continue;
      changed = true;
      if (ptrace_call(PTRACE_SEIZE, tid, nullptr, kSeizeOptions) != 0) {
        const int err = errno;
        if (err == ESRCH) continue;  // exited since the listing
        if (err == EPERM && tgid_of(tid) == 0) continue;
        // Auto-attached at its clone already: ours.
        if (err == EPERM) {
          auto st = process::read_proc_file(process::task_path(pid, tid, "status"), 1 << 16);
          auto tracer = st ? process::status_field(*st, "TracerPid") : std::nullopt;
          if (tracer && *tracer == std::to_string(gettid())) {  // the tracer thread: this one
            p.threads[tid];
            tid_to_pid_[tid] = pid;
            continue;
          }
        }
        (void)detach(pid);
        if (err == EPERM || err == EACCES)
          return fail(Errc::kPermission, "cannot hold pid " + std::to_string(pid) + ": ptrace refused (" +
                                             errno_name(err) + "); " + process::ptrace_refused_advice(pid));
        return fail(Errc::kIo, "PTRACE_SEIZE of thread " + std::to_string(tid) + ": " + errno_name(err));
      }
      p.threads[tid];
      tid_to_pid_[tid] = pid;
    }
    if (!changed) break;
    if (monotonic_ns() > deadline) {
      (void)detach(pid);
      return fail(Errc::kIo, "pid " + std::to_string(pid) + " kept creating threads faster than they could be held");
    }
  }
  if (p.threads.empty()) {
    processes_.erase(pid);
    return fail(Errc::kNotFound, "pid " + std::to_string(pid) + " exited before it could be held");
  }
  std::lock_guard lock(mu_);
  held_pids_.push_back(pid);
  return {};
}

Status PtraceHolder::detach(pid_t pid) {
  auto it = processes_.find(pid);
  if (it == processes_.end()) return {};
  Process& p = *it->second;
  Status st = stop_all(p, monotonic_ns() + kStopTimeoutNs);  // PTRACE_DETACH needs a stopped tracee
  if (processes_.count(pid)) {
    for (auto& [tid, t] : p.threads) {
      if (t.stopped) ptrace_call(PTRACE_DETACH, tid, nullptr, t.group_stop ? 0 : t.pending_signal);
      tid_to_pid_.erase(tid);
    }
    processes_.erase(pid);
  }
  std::lock_guard lock(mu_);
  std::erase(held_pids_, pid);
  return st;
}

}  // namespace mlfx::agent::daemon
