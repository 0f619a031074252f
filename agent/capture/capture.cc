#include "capture/capture.h"

#include "io/capture_io_policy.h"

namespace mlfx::agent {

namespace {

// Thaws every source on the way out, whatever happened; a failed thaw is reported only when
// nothing failed before it.
class Frozen {
 public:
  explicit Frozen(const std::vector<CaptureSource*>& sources) : sources_(sources) {}
  ~Frozen() { (void)thaw(); }
  Status thaw() {
    Status first;
    for (CaptureSource* s : sources_)
      if (auto st = s->thaw(); !st && first) first = fail(std::move(st).error().context(s->name() + " source"));
    return first;
  }

 private:
  const std::vector<CaptureSource*>& sources_;
};

// One source: its fields as they are; several: each under its name.
json::Json merged(const std::vector<CaptureSource*>& sources, json::Json (CaptureSource::*part)() const) {
  if (sources.size() == 1) return (sources.front()->*part)();
  json::Json all = json::Json::object();
  for (const CaptureSource* s : sources) all[s->name()] = (s->*part)();
  return all;
}

}  // namespace

Result<CaptureOutcome> capture_to_bundle(const std::vector<CaptureSource*>& sources, File out,
                                         const crypto::SigningKey& device,
                                         const std::vector<crypto::BoxPublicKey>& recipients,
                                         bundle::SealParams params, bool show_progress) {
  if (sources.empty()) return fail(Errc::kInvalidArgument, "a capture needs at least one source");
  io::CaptureIoPolicy policy;  // outlives the writer
  params.policy = &policy;
  MLFX_ASSIGN(bundle::BundleWriter w,
              bundle::BundleWriter::create(std::move(out), device, recipients, std::move(params)));
  uint64_t expected = 0;
  for (const CaptureSource* s : sources) expected += s->expected_bytes();
  // Page faults on the buffers are taken now, not while the targets are frozen.
  MLFX_TRY(w.prepare_buffers(expected));

  policy.set_background(true);  // while frozen, reading comes first; sealing uses what is left
  Frozen frozen(sources);
  for (CaptureSource* s : sources)
    if (auto st = s->freeze(); !st) return fail(std::move(st).error().context(s->name() + " source"));
  for (size_t i = 0; i < sources.size(); ++i) {
    CaptureSource& s = *sources[i];
    if (auto st = s.read(w, show_progress); !st) return fail(std::move(st).error().context(s.name() + " source"));
    if (i + 1 < sources.size()) {  // one stream at a time in the writer
      MLFX_ASSIGN(bundle::StreamInfo sealed, w.end_stream());
      s.stream_sealed(sealed);
    }
  }
  w.add_context(merged(sources, &CaptureSource::manifest_context));
  MLFX_TRY(frozen.thaw());
  policy.set_background(false);
  MLFX_ASSIGN(bundle::StreamInfo sealed, w.end_stream());
  sources.back()->stream_sealed(sealed);

  CaptureOutcome outcome;
  for (CaptureSource* s : sources) {
    MLFX_TRY(s->write_side_streams(w));
    outcome.contexts.push_back(s->context());
    outcome.complete = outcome.complete && s->complete();
    MLFX_TRY(w.begin_stream(s->context_stream(), s->context_stream_source()));
    MLFX_TRY(w.write(as_bytes(json::canonical(outcome.contexts.back()))));
    MLFX_TRY(w.end_stream());
  }
  json::Json acquisition = merged(sources, &CaptureSource::acquisition);
  MLFX_ASSIGN(outcome.manifest, w.finish(std::move(acquisition)));
  MLFX_TRY(policy.finish_writes());
  return outcome;
}

}  // namespace mlfx::agent
