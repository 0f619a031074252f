// Which running processes are targets: /proc read against the [[target]] selectors. A process
// matches a target when it matches every selector the target gives; the first target in the
// file wins. Everything read here is the process's own doing (its comm, its command line), so it
// only selects; it is never executed or used to build a path.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "daemon/config.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::daemon {

struct ProcessFacts {
  pid_t pid = 0;
  std::string exe;      // /proc/PID/exe (" (deleted)" kept: a replaced binary does not match)
  std::string comm;     // /proc/PID/comm
  std::string cmdline;  // /proc/PID/cmdline, NULs as spaces, at most 4 KiB
  std::string cgroup;   // the cgroup v2 path, or systemd's v1 hierarchy on a hybrid system
};

// kNotFound for a process that is gone; kernel threads (no exe) come back with exe empty.
Result<ProcessFacts> read_process_facts(pid_t pid);

bool matches(const TargetSpec& target, const ProcessFacts& facts);

// The cgroup path of a process from /proc/PID/cgroup's text: the v2 entry ("0::/path"), or the
// name=systemd one where the v2 entry is the root (hybrid hierarchies).
std::string cgroup_path(std::string_view proc_cgroup);

struct TargetProcess {
  pid_t pid = 0;
  std::string target;  // the [[target]] name
  ProcessFacts facts;
};

// Every process that is a target, by pid. `self` (the agent) and kernel threads never are.
// At most `max_processes` /proc entries are looked at (a bound on a hostile process count).
std::map<pid_t, TargetProcess> find_targets(const std::vector<TargetSpec>& targets, pid_t self,
                                            size_t max_processes = 1u << 20);

// One process checked against the targets (an exec the eBPF program reported).
std::optional<TargetProcess> target_of(const std::vector<TargetSpec>& targets, pid_t pid, pid_t self);

}  // namespace mlfx::agent::daemon
