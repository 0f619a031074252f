#include "capture/process/process_source.h"

#include "capture/process/proc_maps.h"
#include "mlfx/base/progress.h"

namespace mlfx::agent::process {

namespace {

// The bundle's core stream as the core writer's sink: memory is read into its chunk buffers.
class BundleSink : public CoreSink {
 public:
  explicit BundleSink(bundle::BundleWriter& w) : w_(w) {}
  Result<std::span<uint8_t>> buffer(size_t max) override { return w_.buffer(max); }
  Status commit(size_t n) override { return w_.commit(n); }

 private:
  bundle::BundleWriter& w_;
};

}  // namespace

// What the core will roughly hold, from /proc/PID/maps before the freeze: its readable mappings.
uint64_t ProcessSource::expected_bytes() const {
  uint64_t total = 0;
  if (auto maps = read_proc_maps(options_.pid))
    for (const MapEntry& m : *maps)
      if (m.readable()) total += m.size();
  return total;
}

Status ProcessSource::freeze() {
  MLFX_ASSIGN(ProcessCapture c, ProcessCapture::freeze(options_));
  capture_.emplace(std::move(c));
  return {};
}

Status ProcessSource::read(bundle::BundleWriter& bundle, bool show_progress) {
  if (!capture_) return fail(Errc::kInvalidArgument, "process source: read before freeze");
  const std::string pid = std::to_string(options_.pid);
  MLFX_TRY(bundle.begin_stream("core", "/proc/" + pid + "/mem"));
  std::optional<Progress> bar;
  if (show_progress) bar.emplace("capturing pid " + pid, capture_->layout().file_size());
  BundleSink sink(bundle);
  if (auto st = capture_->write_core(sink, bar ? &*bar : nullptr); !st)
    return fail(std::move(st).error().context("writing the core of pid " + pid));
  if (bar) bar->finish();
  return {};
}

Status ProcessSource::thaw() { return capture_ ? capture_->thaw() : Status{}; }

void ProcessSource::stream_sealed(const bundle::StreamInfo&) {
  if (capture_) capture_->note_core_sealed();
}

json::Json ProcessSource::manifest_context() const {
  json::Json c = capture_->summary();
  c.update(capture_->completeness());
  return c;
}

std::string ProcessSource::context_stream_source() const { return "/proc/" + std::to_string(options_.pid); }

json::Json ProcessSource::context() const { return capture_->context(); }

json::Json ProcessSource::acquisition() const { return capture_->acquisition(); }

bool ProcessSource::complete() const { return capture_ && capture_->completeness().value("capture_complete", false); }

}  // namespace mlfx::agent::process
