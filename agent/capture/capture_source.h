// A capture source: one kind of evidence the agent captures. The process source today (a
// process's memory as an ELF core); stock LiME, mlfx_mem.ko and the CUDA core dump next. Each
// is one class; capture.h drives them all the same way, several under one freeze:
//
//   expected_bytes (nothing frozen yet) ─► freeze ─► read into the bundle ─► thaw
//     ─► stream_sealed ─► side streams ─► manifest_context / context / acquisition
//
// A source that reads_before_freeze() (the GPU core dump: the CUDA driver writes it from a
// thread inside the target, which a ptrace stop would halt) reads, and its stream is sealed,
// before any source freezes; such sources come first in a capture.
#pragma once

#include <cstdint>
#include <string>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"
#include "mlfx/bundle/writer.h"

namespace mlfx::agent {

class CaptureSource {
 public:
  virtual ~CaptureSource() = default;

  // "process", "lime", "kmod", "gpu": recorded in the manifest and the custody event.
  virtual std::string name() const = 0;
  // Whether this source reads before anything is frozen (see above). False by default.
  virtual bool reads_before_freeze() const { return false; }
  // Before anything is frozen: about how many bytes its streams will hold. Chunk buffers for
  // them are allocated and touched now, so that reading while frozen takes no page faults.
  virtual uint64_t expected_bytes() const = 0;
  // Makes what this source reads stand still (a process: every thread stopped). A source that
  // needs no freeze returns at once. Called for every source before any reads.
  virtual Status freeze() = 0;
  // While everything is frozen: begins this source's evidence stream in `bundle` and fills
  // it. The choreography ends the stream (for the last source only after the thaw, so that
  // hashing and encryption of what is buffered finish while the target runs again).
  virtual Status read(bundle::BundleWriter& bundle, bool show_progress) = 0;
  // Lets the target run again. Idempotent; the destructor thaws too, on every failure path.
  virtual Status thaw() = 0;
  // Its evidence stream is sealed, as the manifest lists it (the time goes into the context).
  virtual void stream_sealed(const bundle::StreamInfo& stream) = 0;
  // After the thaw and the sealing of every evidence stream, before the context: further
  // streams of this source, each begun and ended here, one at a time (a whole-memory capture
  // adds pagemap, kallsyms, btf). None by default.
  virtual Status write_side_streams(bundle::BundleWriter&) { return {}; }

  // After the read: small facts for the manifest's "context" (signed with the manifest).
  virtual json::Json manifest_context() const = 0;
  // After the thaw: the full context document, sealed as its own stream.
  virtual std::string context_stream() const = 0;         // e.g. "context"
  virtual std::string context_stream_source() const = 0;  // e.g. "/proc/4242"
  virtual json::Json context() const = 0;
  // What the custody chain's 'acquired' event records of this source.
  virtual json::Json acquisition() const = 0;
  // Whether everything was read (a process that exits mid-capture leaves a partial one).
  virtual bool complete() const = 0;
};

}  // namespace mlfx::agent
