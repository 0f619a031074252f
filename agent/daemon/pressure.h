// Memory pressure that precedes an OOM kill, from the kernel's pressure stall information (PSI):
// a trigger written to a memory.pressure file ("some STALL_US WINDOW_US") makes the kernel wake
// its reader (POLLPRI) when the tasks it covers stalled on memory for that long within a window:
// reclaim, swap-in and refaults, as a cgroup nears its limit or the machine runs out. The file is
// the target's cgroup v2 one (also on hybrid hierarchies, under /sys/fs/cgroup/unified) or, for a
// process in the root cgroup, the machine's /proc/pressure/memory. Where the kernel refuses
// triggers (some kernels and sandboxes answer EINVAL to every one), the file's "some total"
// is sampled instead and the same threshold applied to it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "daemon/config.h"
#include "mlfx/base/file.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::daemon {

struct PressureSource {
  std::string file;   // the memory.pressure file
  std::string scope;  // "cgroup /system.slice/x.service" or "system-wide"
};

// Where the memory pressure of process `pid` is reported. kNotFound without PSI (a kernel
// built without CONFIG_PSI, or booted with psi=0).
Result<PressureSource> pressure_source_of(pid_t pid);

class PressureWatch {
 public:
  static Result<PressureWatch> open(const PressureSource& source, const PressureThreshold& threshold);
  // A kernel trigger: poll fd() for POLLPRI. Else sampled: call sample() a few times a window.
  bool sampled() const { return sampled_; }
  int fd() const { return file_.fd(); }
  // Sampled watches: whether the threshold was crossed since the last time it said so (at most
  // once a window, as a kernel trigger fires).
  bool sample(int64_t now_ns);
  const PressureSource& source() const { return source_; }
  const PressureThreshold& threshold() const { return threshold_; }
  // The file's figures now ("some avg10=1.20 avg60=… total=…; full …"), for the evidence.
  std::string figures() const;
  // How it watches, for the log: "kernel trigger" or why it samples.
  const std::string& mode() const { return mode_; }

 private:
  PressureWatch(File f, PressureSource s, PressureThreshold t) : file_(std::move(f)), source_(std::move(s)), threshold_(t) {}
  File file_;
  PressureSource source_;
  PressureThreshold threshold_;
  bool sampled_ = false;
  std::string mode_ = "kernel trigger";
  std::deque<std::pair<int64_t, uint64_t>> samples_;  // (CLOCK_MONOTONIC ns, some total us)
};

// "some avg10=… total=N" -> N (microseconds of stall since boot); nullopt when absent.
std::optional<uint64_t> some_total(std::string_view figures);

}  // namespace mlfx::agent::daemon
