// How a CUDA target is armed for a GPU core dump the agent triggers later, and what the agent
// reads of a target to find its dump pipe (../shared/reference/gpu-capture.md §1).
//
// Arming happens at the target's start, through its environment (the driver reads it once, at
// cuInit): `mlfx-agent gpu-env` prints
//   CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1      the driver makes a pipe; a byte written to it
//                                              starts a dump, written by a driver thread inside
//                                              the target, which runs on afterwards
//   CUDA_COREDUMP_PIPE=DIR/corepipe.%p         that pipe, in the agent's directory
//   CUDA_COREDUMP_FILE=DIR/core.%p             where the dump goes: the agent makes a FIFO there
//                                              just before it triggers, so the driver streams the
//                                              dump into the agent (and the sealer), never a disk
//   CUDA_COREDUMP_GENERATION_FLAGS=skip_nonrelocated_elf_images
//   CUDA_COREDUMP_SHOW_PROGRESS=1              progress lines on the target's stderr
// The flags keep every memory region the driver can dump: global and managed memory (the
// weights), shared and local memory, constant banks; they skip only the unrelocated copies of
// the cubins, which the dump holds relocated anyway. Never skip_global_memory (a dump without
// the model), nor gzip_compress (CPU time in the target; the analyzer reads the ELF as is).
//
// Where the driver's core dump cannot be used (a driver or platform without it, other CUDA tools
// in the way), the CUPTI library (agent/cupti, protocol/doc/cupti-allocations.md) copies the
// live allocations out in the same format: `mlfx-agent gpu-env --cupti LIB` adds
//   CUDA_INJECTION64_PATH=LIB                  the driver loads it at cuInit
//   MLFX_CUPTI_TRIGGER=DIR/cupti-trigger.%p    the library's FIFO: a byte starts a copy-out
//   MLFX_CUPTI_OUTPUT=DIR/cupti-core.%p        where it goes: the agent's FIFO, as above
// The agent uses the driver's dump when the target is armed for it, else the copy-out.
//
// DIR (default /run/mlfx-agent/gpu) is the agent's: owned by root, mode 1733 (anyone may make
// an entry, nobody may list it or remove another's), so that a target of any user can make its
// pipe there. Everything a target's environment says is hostile input: read bounded, never
// executed; a template outside DIR, with '..', a '| command' form, or a specifier other than
// %p, %h and %% is refused.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::gpu {

inline constexpr char kDefaultGpuDir[] = "/run/mlfx-agent/gpu";
inline constexpr char kGenerationFlags[] = "skip_nonrelocated_elf_images";
inline constexpr size_t kMaxEnvironBytes = 1u << 20;  // /proc/PID/environ read at most this far
inline constexpr size_t kMaxTemplateBytes = 1024;

// The variables that arm a target, KEY and VALUE, in the order gpu-env prints them; with the
// CUPTI library's path, those of its copy-out too.
std::vector<std::pair<std::string, std::string>> arming_environment(const std::string& dir,
                                                                    const std::string& cupti_library = "");

// Makes DIR (and its parent) if missing, mode 1733, owned by this user; refuses a DIR that is a
// symlink, is not a directory, belongs to someone else, or that others may empty (writable
// without the sticky bit).
Status ensure_gpu_dir(const std::string& dir);
// The same checks on an existing DIR; returns an O_PATH|O_DIRECTORY descriptor of it.
Result<int> open_gpu_dir(const std::string& dir);

// A template of the target's environment, checked and expanded for pid `pid` (as the target
// sees itself: its innermost namespace pid) and host `host`. Returns the file name within
// `dir`: the expanded path must be DIR/NAME with NAME a plain name.
Result<std::string> expand_template(const std::string& templ, const std::string& dir, pid_t pid,
                                    const std::string& host);

// What a target's environment says about arming.
struct Arming {
  bool armed = false;
  std::string why_not;  // when not armed: what is missing, and how to arm
  std::string pipe_template, file_template, flags;  // as the target has them (flags may be "")
  std::string pipe_name, file_name;                 // expanded, within the dir
  bool show_progress = false;
  // The CUPTI library's copy-out (MLFX_CUPTI_TRIGGER and MLFX_CUPTI_OUTPUT both set).
  bool cupti = false;
  std::string cupti_trigger_template, cupti_output_template;
  std::string cupti_trigger_name, cupti_output_name;  // expanded, within the dir
  json::Json to_json() const;
};

// From the raw bytes of /proc/PID/environ (NUL-separated; possibly cut at kMaxEnvironBytes).
// A hostile template is an error (kPermission, saying which and why), not "not armed".
Result<Arming> parse_arming(std::string_view environ, const std::string& dir, pid_t ns_pid,
                            const std::string& host);
// Reads /proc/PID/environ and /proc/PID/status (NSpid) of `pid`.
Result<Arming> read_arming(pid_t pid, const std::string& dir);

// The NVIDIA driver as /proc/driver/nvidia (under `root`) tells it: "version" and each GPU's
// "information", bounded; {"available": false, "why": ...} on a machine without it.
json::Json nvidia_driver_facts(const std::string& root = "/proc/driver/nvidia");

// cuda-gdb, the fallback for a target not armed: /usr/local/cuda/bin/cuda-gdb, else the first
// on PATH. nullopt when there is none.
std::optional<std::string> find_cuda_gdb();
// The command line that attaches cuda-gdb to `pid` and writes its GPU core dump to `core_path`
// (`generate-cuda-core-file`, cuda-gdb manual §4.5), then detaches (batch mode ends it).
std::vector<std::string> cuda_gdb_argv(const std::string& cuda_gdb, pid_t pid,
                                       const std::string& core_path);

}  // namespace mlfx::agent::gpu
