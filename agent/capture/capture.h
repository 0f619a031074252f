// The one capture path of the agent, whatever the sources: sources to the sealer.
//
//   allocate buffers ─► freeze every source ─► read each into its bundle stream ─► thaw all
//     ─► finish sealing ─► context streams ─► manifest + custody ('acquired', 'sealed')
//
// While the targets are frozen the sealing threads run at the lowest CPU priority (the
// agent's I/O policy, io/capture_io_policy.h): reading comes first. Several sources run under
// one freeze (coordinated capture: GPU first, then process or whole memory); every stream but
// the last is sealed to its end before the next source reads, the last one after the thaw.
// The GPU source reads before the freeze (CaptureSource::reads_before_freeze: the driver writes
// the dump from a thread inside the target), its read marked "before_freeze" in the timeline.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "capture/capture_source.h"
#include "mlfx/base/file.h"
#include "mlfx/bundle/manifest.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::agent {

struct CaptureOutcome {
  bundle::Manifest manifest;
  std::vector<json::Json> contexts;  // one per source, in order
  bool complete = true;              // every source read everything
  json::Json timeline;               // as in the manifest's context (a triggered capture only)
};

// What set off a capture (the daemon's triggers). The manifest's context records "trigger"
// (the evidence) and "timeline" (the trigger, the freeze, each source's read, the thaw, each
// in ms after the trigger on CLOCK_MONOTONIC, eBPF's clock); the custody 'acquired' event
// records "trigger" too.
struct CaptureTrigger {
  json::Json evidence = json::Json::object();  // rule, kind, pid, comm, signal or event, kernel stack
  int64_t monotonic_ns = 0;  // when it happened
  int64_t frozen_ns = 0;     // when the target was already stopped before the capture began
                             // (held at a fatal signal); 0 otherwise
  // Said of the "thawed" event when thawing does not let the target run (held at a fatal
  // signal: it stays stopped until the capture is complete, then dies of the signal).
  std::string thaw_note;
  // Evidence that takes time to gather (kernel symbols): added after the thaw, before the
  // manifest is signed, so that it does not lengthen the freeze.
  std::function<void(json::Json& evidence)> complete_evidence;
};

// CLOCK_MONOTONIC now in nanoseconds: the clock of bpf_ktime_get_ns() and of the timeline.
int64_t monotonic_ns();

// Seals the sources' streams into a new bundle on `out` (an empty new file; the caller removes
// it on failure), signed with `device`, encrypted to `recipients`.
Result<CaptureOutcome> capture_to_bundle(const std::vector<CaptureSource*>& sources, File out,
                                         const crypto::SigningKey& device,
                                         const std::vector<crypto::BoxPublicKey>& recipients,
                                         bundle::SealParams params, bool show_progress,
                                         const CaptureTrigger* trigger = nullptr);

}  // namespace mlfx::agent
