// Holds armed targets so that a fatal signal cannot kill them before they are captured.
//
// One thread, the holder, seizes every thread of each held process (PTRACE_SEIZE: nothing
// stops; PTRACE_O_TRACECLONE seizes new threads too). The kernel then stops a thread at each
// signal delivery and tells the holder (SIGCHLD, read from a signalfd). An ordinary signal is
// passed on at once; a fatal one (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT as configured)
// that the process does not catch (it is about to die) makes the holder stop every other
// thread (PTRACE_INTERRUPT) and hand the stopped process to `on_fatal`, which captures it.
// Then every thread continues and the signal takes its course: the process dies as it would
// have, only later. eBPF cannot do this: a synchronous fault's signal is dequeued before any
// stop a program could ask for.
//
// The holder thread is also the daemon's capture thread: jobs posted to it run there one at a
// time, so that every ptrace request about a held process comes from its tracer. If the agent
// dies, the kernel detaches every tracee and delivers a held signal: nothing stays frozen.
// A held process cannot be traced by anyone else meanwhile (a debugger gets EPERM).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "capture/capture.h"
#include "capture/process/thread_freezer.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::daemon {

// A fatal signal caught before it was delivered.
struct FatalSignal {
  pid_t pid = 0;
  pid_t tid = 0;           // the thread it was for
  int signal = 0;
  int si_code = 0;         // > 0: sent by the kernel (a fault); <= 0: sent by a process
  pid_t sender = 0;        // si_pid when a process sent it
  uint64_t fault_address = 0;
  int64_t stopped_ns = 0;  // CLOCK_MONOTONIC: the holder saw the stop
  int64_t frozen_ns = 0;   // CLOCK_MONOTONIC: every thread stopped
};

class PtraceHolder {
 public:
  // A held process with every thread stopped, for the length of a job or `on_fatal`.
  class Stopped {
   public:
    pid_t pid() const { return pid_; }
    // A freezer over the stopped threads for ProcessCaptureOptions::freeze_threads. Its thaw()
    // lets the process run on at once in a job (sealing finishes while it runs); at a fatal
    // signal it does nothing: the process stays stopped until the capture is done, then dies.
    process::ThreadFreezer freezer() const;

   private:
    friend class PtraceHolder;
    pid_t pid_ = 0;
    std::vector<process::FrozenThread> threads_;
    std::function<void()> resume_;  // set in jobs: continue the threads now
  };
  using OnFatal = std::function<void(const FatalSignal&, const Stopped&)>;
  // A held process is gone (exited, or exec'd into something else: `how` says which).
  using OnGone = std::function<void(pid_t pid, const std::string& how)>;
  // What a job can do on the holder thread.
  class Jobs {
   public:
    // Stops every thread of held process `pid` and runs `fn` with it; continues them after.
    // kNotFound if `pid` is not held.
    Status with_stopped(pid_t pid, const std::function<void(const Stopped&)>& fn);
    // Stops every thread of held process `pid` now, for ProcessCaptureOptions::freeze_threads:
    // the freezer's thaw() continues them (resume() too, for a capture that failed before).
    Result<process::ThreadFreezer> freeze(pid_t pid);
    void resume(pid_t pid);
    bool held(pid_t pid) const;

   private:
    friend class PtraceHolder;
    explicit Jobs(PtraceHolder& h) : h_(h) {}
    PtraceHolder& h_;
  };
  using Job = std::function<void(Jobs&)>;

  // SIGCHLD must be blocked in every thread of the process before this (the daemon blocks it
  // in main before any thread starts); the holder reads it from a signalfd.
  static Result<std::unique_ptr<PtraceHolder>> start(OnFatal on_fatal, OnGone on_gone);
  ~PtraceHolder();  // detaches every held process, stops the thread

  // Seizes every thread of `pid`, holding it for `signals`. Blocks until done.
  Status hold(pid_t pid, std::set<int> signals);
  // Lets `pid` go (PTRACE_DETACH of each thread). Blocks until done.
  Status release(pid_t pid);
  // Runs `job` on the holder thread, after the jobs posted before it. Returns at once.
  void post(Job job);
  // Jobs not yet started (a bounded queue is the caller's business).
  size_t queued() const;
  std::vector<pid_t> held() const;

 private:
  struct Thread;
  struct Process;
  PtraceHolder(OnFatal on_fatal, OnGone on_gone);
  void loop();
  void run_queued();
  void drain_waits();
  void on_wait(pid_t tid, int status);
  Status seize(pid_t pid, std::set<int> signals);
  Status detach(pid_t pid);
  Status stop_all(Process& p, int64_t deadline_ns);
  // Continues every stopped thread with its pending signal; a pending fatal signal only when
  // `deliver_fatal` (after its capture), else that thread stays stopped for handle_fatal.
  void resume_all(Process& p, bool deliver_fatal);
  bool fatal_for(const Process& p, int sig) const;
  void handle_fatal(Process& p, pid_t tid, int sig);
  Process* process_of(pid_t tid);
  Stopped stopped_view(const Process& p) const;

  OnFatal on_fatal_;
  OnGone on_gone_;
  int sigchld_fd_ = -1;
  int wake_fd_ = -1;
  bool quit_ = false;
  mutable std::mutex mu_;                 // guards jobs_ and held_pids_
  std::vector<Job> jobs_;
  std::vector<pid_t> held_pids_;
  std::map<pid_t, std::unique_ptr<Process>> processes_;  // holder thread only
  std::map<pid_t, pid_t> tid_to_pid_;                     // holder thread only
  std::vector<std::pair<pid_t, int>> fatal_later_;       // (tid, signal) seen while busy
  std::thread thread_;
};

}  // namespace mlfx::agent::daemon
