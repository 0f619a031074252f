// The GPU source: the CUDA GPU core dump of one live process (stream "gpu-core", the bytes as
// the driver wrote them) and its context (stream "gpu-context").
//
// Pipe trigger (a target armed at its start, cuda_arming.h): the agent makes a FIFO at the
// target's CUDA_COREDUMP_FILE path (in its own directory, never following a link, owned by the
// target's user, mode 0600), writes one byte to the target's CUDA_COREDUMP_PIPE, and reads the
// dump the driver streams into the FIFO straight into the sealer, until the driver closes it.
// The driver writes from a thread inside the target, so this source reads BEFORE anything
// freezes the target (reads_before_freeze): a ptrace-stopped target cannot write its dump.
// A target armed for the CUPTI library's copy-out instead (gpu-env --cupti): the same with its
// trigger FIFO and output, written by the library's thread in the target (the live allocations
// it tracked, in the same format). Fallback, a target armed for neither where cuda-gdb is
// installed: cuda-gdb attaches, writes the GPU core into the FIFO (generate-cuda-core-file), and
// detaches.
//
// Bounded in time: no first byte within first_byte_timeout, no data for idle_timeout, or more
// than total_timeout in all fails the capture clearly, and the FIFO is removed on every path.
// Afterwards the target must still be the same process (alive, same start time): a target that
// dies during its dump fails the capture (a part of a dump is not passed off as one).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "capture/capture_source.h"
#include "capture/gpu/cuda_arming.h"

namespace mlfx::agent::gpu {

struct GpuCaptureOptions {
  pid_t pid = 0;
  std::string dir = kDefaultGpuDir;                 // the agent's directory (cuda_arming.h)
  std::string nvidia_proc = "/proc/driver/nvidia";  // driver facts (a test injects a fake tree)
  std::chrono::seconds first_byte_timeout{120};     // the driver collects every SM's state first
  std::chrono::seconds idle_timeout{60};
  std::chrono::seconds total_timeout{3600};
  bool allow_cuda_gdb = true;  // the fallback for a target not armed
  const std::atomic<bool>* cancel = nullptr;
};

class CudaCoredumpSource final : public CaptureSource {
 public:
  // Checks the target before anything is created: kUnsupported with a message saying how to
  // arm when it is not armed and cuda-gdb cannot stand in (not_armed() tells that case apart);
  // kPermission for a hostile environment.
  static Result<std::unique_ptr<CudaCoredumpSource>> create(GpuCaptureOptions options);
  // The error create() returns for a target that is simply not armed.
  static bool not_armed(const Error& e);

  std::string name() const override { return "gpu"; }
  bool reads_before_freeze() const override { return true; }
  uint64_t expected_bytes() const override { return 0; }  // unknown until the driver writes it
  Status freeze() override { return {}; }
  Status read(bundle::BundleWriter& bundle, bool show_progress) override;
  Status thaw() override { return {}; }
  void stream_sealed(const bundle::StreamInfo& stream) override;
  json::Json manifest_context() const override;
  std::string context_stream() const override { return "gpu-context"; }
  std::string context_stream_source() const override;
  json::Json context() const override;
  json::Json acquisition() const override;
  bool complete() const override { return complete_; }

  const std::string& method() const { return method_; }

 private:
  explicit CudaCoredumpSource(GpuCaptureOptions o) : options_(std::move(o)) {}
  struct Fifo;
  Status stream_dump(Fifo& fifo, bundle::BundleWriter& bundle, bool show_progress, pid_t helper);
  // Writes the one byte that starts a dump into DIR/NAME, the FIFO `listener` reads.
  Status trigger_pipe(const std::string& name, const std::string& listener);
  Result<pid_t> start_cuda_gdb(const std::string& core_path);

  GpuCaptureOptions options_;
  Arming arming_;
  std::string method_;  // "pipe-trigger", "cupti-copy-out" or "cuda-gdb"
  std::string cuda_gdb_;
  uint64_t start_time_ = 0;  // /proc/PID/stat starttime: the same process afterwards
  uid_t target_uid_ = 0;
  uint64_t bytes_ = 0;
  std::string format_;  // "elf", "gzip" or "unknown" from the first bytes
  int64_t trigger_ns_ = 0, first_byte_ns_ = 0, eof_ns_ = 0;
  bool survived_ = false, complete_ = false;
  std::string sha256_;
};

}  // namespace mlfx::agent::gpu
