// A whole-memory capture source (protocol/doc/physical-capture.md): the machine's physical RAM
// in LiME format as stream `memory`, and beside it what the lab needs to find processes in it
// without a symbol table: `pagemap` (the --pid processes' virtual->physical maps, recorded while
// they are frozen), `kallsyms`, `btf`, and the `context` document. Two backends share it:
// stock LiME (lime_source.h) and our own module mlfx_mem.ko (kmod_source.h).
//
//   create (checks: pids exist, module file, /proc/iomem) ─► freeze (pause khugepaged; kmod:
//   load the module; then stop every --pid process) ─► read (record the processes; the image
//   into `memory`; unload the module) ─► thaw (and resume khugepaged) ─► side streams (pagemap,
//   kallsyms, btf) ─► context
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "capture/capture_source.h"
#include "capture/physical/iomem.h"
#include "capture/physical/kernel_facts.h"
#include "capture/physical/kernel_module.h"
#include "capture/physical/khugepaged_pause.h"
#include "capture/physical/target_processes.h"
#include "mlfx/base/progress.h"

namespace mlfx::agent::physical {

struct PhysicalOptions {
  std::string module_path;  // empty: the DKMS-installed module for the running kernel
  std::vector<pid_t> pids;  // processes frozen and recorded while the image is read
  std::chrono::milliseconds stop_timeout{10'000};
  // Set (e.g. from a signal handler) to abandon the capture; the module is unloaded and the
  // targets thawed, and the caller removes the incomplete bundle.
  const std::atomic<bool>* cancel = nullptr;
  // Freezes one of `pids` instead of ThreadFreezer::freeze (the daemon's held targets).
  std::function<Result<process::ThreadFreezer>(pid_t)> freeze_threads;
};

// A range of System RAM that is not in the image (or is, but as zeros), and why.
struct MissingRange {
  PhysRange range;
  std::string reason;
};

class PhysicalSource : public CaptureSource {
 public:
  ~PhysicalSource() override = default;

  uint64_t expected_bytes() const override;
  Status freeze() override;
  Status read(bundle::BundleWriter& bundle, bool show_progress) override;
  Status thaw() override;
  void stream_sealed(const bundle::StreamInfo& stream) override;
  Status write_side_streams(bundle::BundleWriter& bundle) override;
  json::Json manifest_context() const override;
  std::string context_stream() const override { return "context"; }
  std::string context_stream_source() const override { return memory_stream_source(); }
  json::Json context() const override;
  json::Json acquisition() const override;
  bool complete() const override { return image_read_; }

  // For the CLI's summary.
  uint64_t image_bytes() const { return image_stream_bytes_; }
  const std::vector<PhysRange>& image_ranges() const { return image_ranges_; }
  const std::vector<MissingRange>& unreadable() const { return unreadable_; }
  const ModuleFile& module() const { return module_; }

 protected:
  PhysicalSource(PhysicalOptions options) : options_(std::move(options)), targets_(options_.pids) {}
  // The checks before anything is frozen or loaded; `what` names the module in messages.
  Status prepare(const std::string& default_module_file, const std::string& what);

  // Before the targets are frozen (kmod: load the module and open its device).
  virtual Status before_freeze() { return {}; }
  // The image into the begun `memory` stream while the targets are frozen.
  virtual Status read_image(bundle::BundleWriter& bundle, Progress* progress) = 0;
  // Unloads the module if it is loaded by us. Idempotent; called on every path.
  virtual Status release_module() = 0;
  virtual std::string memory_stream_source() const = 0;
  virtual json::Json module_parameters() const = 0;
  // The source's own context fields ("digest", "module" footprint, ...), merged last.
  virtual json::Json source_context() const = 0;
  virtual std::string method() const = 0;

  bool cancelled() const { return options_.cancel && options_.cancel->load(); }
  void count_image(uint64_t stream_bytes, uint64_t data_bytes, uint64_t headers) {
    image_stream_bytes_ += stream_bytes;
    image_data_bytes_ += data_bytes;
    image_headers_ += headers;
  }

  PhysicalOptions options_;
  KernelFacts kernel_;
  std::vector<IomemEntry> iomem_;
  ModuleFile module_;
  TargetProcesses targets_;
  KhugepagedPause khugepaged_;  // from the freeze to the thaw
  std::vector<PhysRange> image_ranges_;     // merged: what the image covers
  std::vector<MissingRange> unreadable_;    // RAM not in the image, and why
  std::vector<MissingRange> zero_filled_;   // in the image, but zeros written by the tool
  std::string image_sha256_;                // of the sealed `memory` stream (hex), once sealed

 private:
  using Clock = std::chrono::steady_clock;
  uint64_t image_stream_bytes_ = 0, image_data_bytes_ = 0, image_headers_ = 0;
  bool image_read_ = false, frozen_ = false, kallsyms_written_ = false, btf_written_ = false;
  std::string kallsyms_why_not_;
  Clock::time_point t_freeze_, t_frozen_, t_recorded_, t_image_done_, t_thawed_, t_sealed_;
};

}  // namespace mlfx::agent::physical
