// The armed daemon's configuration (`mlfx-agent run --config FILE`): a TOML file, commented
// example in packaging/mlfx-agent.toml. Parsed with toml++ and checked as a whole before
// anything is armed: an unknown key, a wrong type, a bad value or a dangling reference is
// refused with "FILE:LINE:COLUMN: what is wrong (what to write instead)". SIGHUP re-reads the
// file; a malformed new file leaves the running configuration armed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx::agent::daemon {

// What can set off a capture. Spelled in the file as the strings in comments.
enum class TriggerKind {
  kFatalSignal,     // "fatal-signal": SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT about to kill a target
  kMemoryPressure,  // "memory-pressure": PSI memory stall of the target's cgroup above a threshold
  kOomKill,         // "oom-kill": the OOM killer chose a target
  kPtraceAttach,    // "ptrace-attach": another process attaches to a target with ptrace
  kMemoryWrite,     // "memory-write": process_vm_writev into a target, or a write to /proc/PID/mem
  kModuleLoad,      // "module-load": a kernel module is loaded while armed
  kAppAnomaly,      // "app-anomaly": the model application raises an anomaly itself (hook socket)
  kOnDemand,        // "on-demand": `mlfx-agent trigger` on the device
  kLabRequest,      // "lab-request": a capture request signed by a lab key
  kLibraryInjection,  // "library-injection": a target maps executable code from a memfd, a deleted
                      // file or a world-writable directory (/tmp, /var/tmp, /dev/shm, /run/user)
  kCudaError,       // "cuda-error": a CUDA call of the target failed, as its CUPTI library reports it
                    // on the anomaly socket ({"op":"cuda-error","api":...,"error":...,"code":...})
};
std::string_view trigger_kind_name(TriggerKind kind);
std::optional<TriggerKind> parse_trigger_kind(std::string_view name);

// What a capture reads. "process" (ptrace + /proc/PID/mem), "lime" / "kmod" (whole memory),
// "gpu" (CUDA core dump of a target that uses CUDA; skipped with a note when it does not).
enum class SourceKind { kProcess, kLime, kKmod, kGpu };
std::string_view source_kind_name(SourceKind kind);

// A [[target]]: a process is a target when it matches every selector given (at least one).
struct TargetSpec {
  std::string name;                      // unique; rules name it
  std::vector<std::string> exe;          // absolute paths of /proc/PID/exe
  std::vector<std::string> comm;         // /proc/PID/comm values
  std::optional<std::string> cmdline;    // ECMAScript regex searched in the NUL->space cmdline
  std::optional<std::regex> cmdline_re;  // compiled from cmdline
  std::vector<std::string> cgroup;       // cgroup v2 path prefixes ("/system.slice/x.service")
  std::vector<std::string> unit;         // systemd unit names (matched as a cgroup path component)
  std::vector<pid_t> pid;                // fixed pids
  int line = 0;                          // where it is defined, for messages
};

struct PressureThreshold {
  std::chrono::microseconds stall{150'000};     // "some" stall time ...
  std::chrono::microseconds window{1'000'000};  // ... within this window (PSI trigger)
};

// A [[rule]]: when one of `on` happens to one of `targets`, capture `sources` into one bundle.
struct RuleSpec {
  std::string name;                     // unique
  std::vector<std::string> targets;     // target names; empty in the file means every target
  std::vector<TriggerKind> on;          // at least one
  std::vector<int> signals;             // fatal-signal: which (default the five above)
  std::vector<SourceKind> sources;      // default {process}; gpu first when listed
  PressureThreshold pressure;           // memory-pressure
  uint32_t max_captures = 3;            // at most this many captures per target ...
  std::chrono::seconds window{3600};    // ... within this window
  std::chrono::seconds cooldown{60};    // and at least this long between two
  int line = 0;
};

struct SpoolSpec {
  std::string dir = "/var/spool/mlfx";
  std::optional<uint64_t> quota;  // bytes; "20G" in the file
};

// [upload]: ship the spool to the lab intake and keep a session for lab capture requests.
struct UploadSpec {
  std::string server;  // HOST:PORT
  std::string ca, cert, key;
  std::optional<std::string> crl, intake_key;
  std::optional<uint64_t> bandwidth;  // bytes per second
  std::chrono::seconds poll{5};
};

// [lab_requests]: capture requests signed by one of these lab keys are honoured.
struct LabRequestSpec {
  std::vector<std::string> signers;   // public key files (.pub)
  std::chrono::seconds max_age{300};  // a request older than this (or from the future) is refused
};

struct AgentSpec {
  std::string device_id;                 // default: the host name
  std::string device_key;                // signs bundles
  std::vector<std::string> recipients;   // lab public keys bundles are encrypted to
  std::string control_socket = "/run/mlfx-agent/control.sock";
  std::optional<std::string> control_group;  // group allowed to use the control socket (root always)
  std::string anomaly_socket = "/run/mlfx-agent/anomaly.sock";
  // Where CUDA targets armed with `mlfx-agent gpu-env --dir` make their dump pipes (the "gpu"
  // source); made at start, mode 1733, when a rule reads "gpu".
  std::string gpu_dir = "/run/mlfx-agent/gpu";
  std::string log_format = "journal";    // "journal" (<N> priority prefixes), "json", "text"
  std::chrono::seconds capture_timeout{600};
  // false: no eBPF program is loaded (fatal signals are still held with ptrace; PSI, on-demand,
  // app-anomaly and lab requests still trigger); for kernels where eBPF must stay off.
  bool ebpf = true;
};

struct DaemonConfig {
  std::string path;  // the file it came from
  AgentSpec agent;
  SpoolSpec spool;
  std::optional<UploadSpec> upload;
  std::optional<LabRequestSpec> lab_requests;
  std::vector<TargetSpec> targets;
  std::vector<RuleSpec> rules;

  const TargetSpec* target(std::string_view name) const;
  // The rules that name this target (or every target) and are set off by `kind`.
  std::vector<const RuleSpec*> rules_for(std::string_view target, TriggerKind kind) const;
};

// Reads and checks the file. kInvalidArgument with "FILE:LINE:COLUMN: reason" when malformed.
Result<DaemonConfig> load_config(const std::string& path);
// The same from text (tests); `path` only names it in messages.
Result<DaemonConfig> parse_config(std::string_view text, const std::string& path);

}  // namespace mlfx::agent::daemon
