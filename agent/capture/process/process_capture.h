// Capture of one live process as an ELF core (sealed into a bundle by the process source,
// process_source.h, through the one capture path, capture/capture.h):
//
//   freeze every thread ─► read registers, maps, auxv, identity ─► plan the core
//     ─► read the core (headers, notes, /proc/PID/mem) into bundle stream "core"
//     ─► thaw ─► finish sealing "core" ─► stream "context" (JSON: kernel, process, threads,
//        mappings with build-ids, timings, what could not be read) ─► finish the bundle
//
// The target is frozen only from the first PTRACE_INTERRUPT to the last PTRACE_DETACH, and
// every exit path detaches. Memory is read straight into the bundle writer's chunk buffers;
// as long as they hold it all (SealParams::buffer_bytes) the target is frozen only for the
// read itself, and hashing and encryption finish after the thaw. With less memory the read
// waits for sealing. No plaintext is written anywhere but into the bundle writer.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "elf_core_writer.h"
#include "thread_freezer.h"
#include "mlfx/base/json.h"
#include "mlfx/bundle/writer.h"

namespace mlfx::agent::process {

struct ProcessCaptureOptions {
  pid_t pid = 0;
  std::chrono::milliseconds stop_timeout{10'000};
  // Set (e.g. from a signal handler) to abandon the capture between read blocks; the target
  // is thawed and the caller removes the incomplete bundle.
  const std::atomic<bool>* cancel = nullptr;
  // Freezes the target instead of ThreadFreezer::freeze (the daemon, which already traces
  // its armed targets, hands over threads it has stopped: ThreadFreezer::adopt).
  std::function<Result<ThreadFreezer>(pid_t)> freeze_threads;
};

// One capture, step by step; the destructor thaws the target if it is still frozen.
class ProcessCapture {
 public:
  // Checks the target (exists, is a process not a thread, not a kernel thread or zombie),
  // freezes it and reads everything the core's layout depends on.
  static Result<ProcessCapture> freeze(const ProcessCaptureOptions& options);

  ProcessCapture(ProcessCapture&&) noexcept;
  ProcessCapture& operator=(ProcessCapture&&) noexcept;
  ~ProcessCapture();

  const ElfCoreLayout& layout() const;
  // A few facts for the bundle manifest's "context".
  json::Json summary() const;

  // Emits the whole core into `sink` while the target is frozen.
  Status write_core(CoreSink& sink, Progress* progress);
  Status write_core(const ByteSink& sink, Progress* progress) {
    CopyingSink copying(sink);
    return write_core(copying, progress);
  }
  // Releases the target. Idempotent.
  Status thaw();
  // Records that the core stream is sealed (its time goes into the context).
  void note_core_sealed();

  // The full context document (after write_core and thaw, with their timings).
  json::Json context() const;
  // The acquisition details for the custody 'acquired' event.
  json::Json acquisition() const;
  // After write_core: whether all memory was read, for the manifest's context. A target that
  // exits during the capture (killed, crashed) leaves a partial core: "capture_complete" false.
  json::Json completeness() const;
  // null, or how and where the target exited during the capture and what was lost.
  json::Json target_exit() const;
  const EmitStats& stats() const;

 private:
  struct State;
  explicit ProcessCapture(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

// `mlfx-agent core` (which `mlfx recover --pid` runs): the core of a live process written to
// `out`, the target frozen only while its memory is read. Returns the context document.
Result<json::Json> capture_process_core(const ProcessCaptureOptions& options, File& out);

}  // namespace mlfx::agent::process
