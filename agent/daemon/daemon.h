// The armed agent: `mlfx-agent run --config FILE`.
//
//   config ─► targets found in /proc (and at every exec the eBPF programs report)
//     ─► armed: eBPF triggers per target; held with ptrace when a rule names fatal-signal
//     ─► trigger (eBPF event, fatal signal caught by the holder, the control socket, the
//        application's anomaly hook) ─► the rules it sets off, each within its capture budget
//     ─► one coordinated capture on the capture thread: freeze, every source the rules name
//        (GPU first), thaw, sealed into the spool with the trigger and a timeline
//
// Threads: the main thread waits on every event source (epoll) and decides; the capture thread
// (the ptrace holder, ptrace_holder.h) freezes and captures, one capture at a time. SIGHUP
// re-reads the configuration (a malformed file leaves the running one armed); SIGTERM and
// SIGINT release every target and stop.
#pragma once

#include <memory>

#include "daemon/config.h"
#include "daemon/log.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::daemon {

class Daemon {
 public:
  // Checks the configuration's keys and spool, binds the sockets, loads the eBPF programs (what
  // this kernel lacks is logged and left out), arms the targets. SIGCHLD, SIGHUP, SIGTERM and
  // SIGINT must be blocked in the calling thread before (they are read from signalfds).
  static Result<std::unique_ptr<Daemon>> start(DaemonConfig config, Log& log);
  ~Daemon();
  // Runs until SIGTERM or SIGINT; returns the exit status.
  int run();

  struct State;

 private:
  explicit Daemon(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

// The signals the daemon reads from signalfds: block them before any thread starts.
void block_daemon_signals();

}  // namespace mlfx::agent::daemon
