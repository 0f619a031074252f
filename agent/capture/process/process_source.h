// The process source: one live process's memory as an ELF core (stream "core") plus its
// context document (stream "context"), read with the process frozen (process_capture.h).
#pragma once

#include <optional>

#include "capture/capture_source.h"
#include "capture/process/process_capture.h"

namespace mlfx::agent::process {

class ProcessSource final : public CaptureSource {
 public:
  explicit ProcessSource(ProcessCaptureOptions options) : options_(options) {}

  std::string name() const override { return "process"; }
  uint64_t expected_bytes() const override;
  Status freeze() override;
  Status read(bundle::BundleWriter& bundle, bool show_progress) override;
  Status thaw() override;
  void stream_sealed(const bundle::StreamInfo&) override;
  json::Json manifest_context() const override;
  std::string context_stream() const override { return "context"; }
  std::string context_stream_source() const override;
  json::Json context() const override;
  json::Json acquisition() const override;
  bool complete() const override;

 private:
  ProcessCaptureOptions options_;
  std::optional<ProcessCapture> capture_;  // from freeze() on
};

}  // namespace mlfx::agent::process
