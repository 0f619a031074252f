// The eBPF triggers in the running kernel (triggers.bpf.c): which hooks this kernel can run,
// which processes are armed, and the events they report (bpf/trigger_event.h).
//
//   MLFX_ASSIGN(auto triggers, BpfTriggers::open({}));
//   for (const Hook& h : triggers.hooks()) if (!h.available) log(h.trigger + ": " + h.reason);
//   MLFX_TRY(triggers.arm(pid, MLFX_EV_FATAL_SIGNAL | MLFX_EV_PTRACE_ATTACH | MLFX_EV_EXIT));
//   epoll on triggers.ring_fd(); when readable: triggers.drain(on_event)
//
// A hook this kernel lacks (no module support, a function renamed or inlined, no BPF trampolines)
// leaves its trigger unavailable with a reason a person understands; the others stay armed.
// Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); mounts tracefs when it is not mounted.
// An armed process is forgotten by the kernel side when it exits (arm MLFX_EV_EXIT to hear of it).
#pragma once

#include <linux/types.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bpf/trigger_event.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::bpf {

// One hook point of a trigger. A trigger with a typed (BTF) hook and a plain tracepoint fallback
// shows the one in use; a fallback in use is available with a reason saying what it lacks.
struct Hook {
  std::string trigger;  // "fatal-signal", "oom-kill", "ptrace-attach", "memory-write", "module-load",
                        // "exec", "exit", "thread-tracking" (resolves thread ids for the fallbacks)
  std::string program;  // the BPF program (triggers.bpf.c)
  bool available = false;
  std::string reason;   // why not available, or what a fallback in use lacks; empty otherwise
};

using EventCallback = std::function<void(const mlfx_trigger_event&)>;

class BpfTriggers {
 public:
  struct Options {
    bool module_load = false;       // report every kernel module load (MLFX_EV_MODULE_LOAD)
    bool exec = false;              // report every exec (MLFX_EV_EXEC), not only armed ones'
    pid_t agent_tgid = ::getpid();  // what this process does (its own ptrace, reads) is not reported
    std::vector<std::string> skip_programs;  // not loaded, as if this kernel lacked them (tests of the
                                             // fallbacks; a hook that misbehaves on some kernel)
  };

  // Loads and attaches every program this kernel can run (0 agent_tgid: nothing is excluded). Errors: kPermission without the
  // capabilities; kUnsupported when the kernel has no BTF (CONFIG_DEBUG_INFO_BTF) or runs none.
  static Result<BpfTriggers> open(const Options& options);

  BpfTriggers(BpfTriggers&&) noexcept;
  BpfTriggers& operator=(BpfTriggers&&) noexcept;
  ~BpfTriggers();  // detaches and unloads everything

  std::vector<Hook> hooks() const;

  // Arms (or re-arms with a new mask) a process for a mask of enum mlfx_event_kind; its current
  // threads are recorded so that hooks naming a thread id find it. kNotFound if it is gone.
  Status arm(pid_t tgid, uint32_t kinds_mask);
  Status disarm(pid_t tgid);  // no error when it was not armed (or exited meanwhile)

  // The ring buffer's epoll descriptor: readable when events wait. drain() hands each waiting
  // event to on_event; poll() waits up to timeout for events first. Both return on an empty ring.
  int ring_fd() const;
  Status drain(const EventCallback& on_event);
  Result<int> poll(std::chrono::milliseconds timeout, const EventCallback& on_event);  // events handled

  // Events the kernel side dropped because the ring buffer was full (the daemon drains too slowly).
  uint64_t lost_events() const;

 private:
  struct State;
  explicit BpfTriggers(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace mlfx::agent::bpf
