#include "capture/capture.h"

#include <time.h>

#include <algorithm>
#include <map>
#include <set>

#include "io/capture_io_policy.h"

namespace mlfx::agent {

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

namespace {

// The moments of a triggered capture, each in ms after the trigger (CLOCK_MONOTONIC).
class Timeline {
 public:
  explicit Timeline(const CaptureTrigger* trigger) : trigger_(trigger) {}
  void mark(const std::string& event, const std::string& source = {}, int64_t at_ns = 0, const std::string& note = {}) {
    if (!trigger_) return;
    if (!at_ns) at_ns = monotonic_ns();
    json::Json e = {{"event", event}, {"at_ms", ms_after_trigger(at_ns)}};
    if (!source.empty()) e["source"] = source;
    if (!note.empty()) e["note"] = note;
    events_.push_back(std::move(e));
    ns_[event + "/" + source] = at_ns;
  }
  json::Json to_json() const {
    if (!trigger_) return nullptr;
    json::Json events = events_;  // a freeze before the capture began is marked out of order
    std::stable_sort(events.begin(), events.end(),
                     [](const json::Json& a, const json::Json& b) { return a["at_ms"].get<double>() < b["at_ms"].get<double>(); });
    json::Json t = {{"clock", "CLOCK_MONOTONIC"}, {"trigger_monotonic_ns", trigger_->monotonic_ns}, {"events", events}};
    auto at = [&](const std::string& key) { auto it = ns_.find(key); return it == ns_.end() ? int64_t{0} : it->second; };
    const int64_t frozen = at("frozen/"), thawed = at("thawed/");
    if (frozen) t["trigger_to_frozen_ms"] = ms_after_trigger(frozen);
    if (frozen && thawed) t["frozen_ms"] = double(thawed - frozen) / 1e6;
    // How far apart the sources' reads began: their evidence is from moments this far apart.
    int64_t first = 0, last = 0;
    for (const auto& [key, ns] : ns_)
      if (key.rfind("read_start/", 0) == 0) {
        first = first ? std::min(first, ns) : ns;
        last = std::max(last, ns);
      }
    if (first) t["skew_ms"] = double(last - first) / 1e6;
    return t;
  }

 private:
  double ms_after_trigger(int64_t ns) const { return double(ns - trigger_->monotonic_ns) / 1e6; }
  const CaptureTrigger* trigger_;
  json::Json events_ = json::Json::array();
  std::map<std::string, int64_t> ns_;
};

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
                                         bundle::SealParams params, bool show_progress,
                                         const CaptureTrigger* trigger) {
  if (sources.empty()) return fail(Errc::kInvalidArgument, "a capture needs at least one source");
  Timeline timeline(trigger);
  timeline.mark("capture_start");
  io::CaptureIoPolicy policy;  // outlives the writer
  params.policy = &policy;
  MLFX_ASSIGN(bundle::BundleWriter w,
              bundle::BundleWriter::create(std::move(out), device, recipients, std::move(params)));
  uint64_t expected = 0;
  for (const CaptureSource* s : sources) expected += s->expected_bytes();
  // Page faults on the buffers are taken now, not while the targets are frozen.
  MLFX_TRY(w.prepare_buffers(expected));

  // Sources that read before the freeze come first (the GPU dump, written by the target itself).
  size_t before_freeze = 0;
  while (before_freeze < sources.size() && sources[before_freeze]->reads_before_freeze()) ++before_freeze;
  for (size_t i = before_freeze; i < sources.size(); ++i)
    if (sources[i]->reads_before_freeze())
      return fail(Errc::kInvalidArgument, "the " + sources[i]->name() + " source reads before the freeze: list it first");

  policy.set_background(true);  // while frozen, reading comes first; sealing uses what is left
  Frozen frozen(sources);
  if (trigger && trigger->frozen_ns) timeline.mark("frozen", {}, trigger->frozen_ns);  // held before
  for (size_t i = 0; i < sources.size(); ++i) {
    CaptureSource& s = *sources[i];
    if (i == before_freeze) {
      for (size_t k = before_freeze; k < sources.size(); ++k)
        if (auto st = sources[k]->freeze(); !st) return fail(std::move(st).error().context(sources[k]->name() + " source"));
      if (!(trigger && trigger->frozen_ns)) timeline.mark("frozen");
    }
    const std::string note = i < before_freeze ? "before_freeze" : "";
    timeline.mark("read_start", s.name(), 0, note);
    if (auto st = s.read(w, show_progress); !st) return fail(std::move(st).error().context(s.name() + " source"));
    timeline.mark("read_end", s.name(), 0, note);
    if (i + 1 < sources.size()) {  // one stream at a time in the writer
      MLFX_ASSIGN(bundle::StreamInfo sealed, w.end_stream());
      s.stream_sealed(sealed);
    }
  }
  w.add_context(merged(sources, &CaptureSource::manifest_context));
  MLFX_TRY(frozen.thaw());
  timeline.mark("thawed", {}, 0, trigger ? trigger->thaw_note : std::string());
  policy.set_background(false);
  MLFX_ASSIGN(bundle::StreamInfo sealed, w.end_stream());
  sources.back()->stream_sealed(sealed);
  timeline.mark("sealed");

  CaptureOutcome outcome;
  std::set<std::string> context_names;
  for (CaptureSource* s : sources) {
    MLFX_TRY(s->write_side_streams(w));
    outcome.contexts.push_back(s->context());
    outcome.complete = outcome.complete && s->complete();
    // In a coordinated capture two sources may both call theirs "context": the first keeps the
    // name, a later one is "<source>.context" (e.g. "lime.context" beside the process's).
    std::string name = s->context_stream();
    if (!context_names.insert(name).second) name = s->name() + "." + name;
    context_names.insert(name);
    MLFX_TRY(w.begin_stream(name, s->context_stream_source()));
    MLFX_TRY(w.write(as_bytes(json::canonical(outcome.contexts.back()))));
    MLFX_TRY(w.end_stream());
  }
  json::Json acquisition = merged(sources, &CaptureSource::acquisition);
  if (trigger) {
    json::Json evidence = trigger->evidence;
    if (trigger->complete_evidence) trigger->complete_evidence(evidence);
    outcome.timeline = timeline.to_json();
    w.add_context({{"trigger", evidence}, {"timeline", outcome.timeline}});
    acquisition["trigger"] = evidence;
  }
  MLFX_ASSIGN(outcome.manifest, w.finish(std::move(acquisition)));
  MLFX_TRY(policy.finish_writes());
  return outcome;
}

}  // namespace mlfx::agent
