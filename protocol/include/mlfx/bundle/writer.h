// Seals evidence streams into a bundle in one streaming pass per stream: each chunk is
// hashed (whole-stream SHA-256, optional MD5/SHA-1), encrypted (AES-256-GCM under a fresh
// data key wrapped to every recipient), hashed again as a sealed record and written.
// No plaintext ever reaches the output file. Streams may be of unknown length (pipes).
//
// The work runs on a pool of threads beside the caller (chunk_pipeline.h): whichever is free
// takes the next piece of work, the in-order whole-stream hashes first, else encrypting and
// hashing a record, else writing the next record in order; so on two cores one hashes the
// stream while the other encrypts and writes. Filled chunks wait in memory up to
// SealParams::buffer_bytes, so a producer that must finish quickly (memory read while its
// process is frozen) can run ahead of sealing. Scheduling, huge pages and writeback are the
// calling program's policy (SealParams::policy).
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mlfx/base/file.h"
#include "mlfx/base/progress.h"
#include "mlfx/bundle/manifest.h"
#include "mlfx/bundle/sealing_policy.h"
#include "mlfx/custody/custody_log.h"

namespace mlfx::bundle {

struct SealParams {
  uint32_t chunk_size = kDefaultChunkSize;
  std::string case_id, note;
  std::string device_id;       // defaults to the host name
  std::string command;         // e.g. "bundle seal", "agent capture"
  json::Json tool_parameters = json::Json::object();
  bool legacy_hashes = false;  // also MD5 and SHA-1 of each stream
  json::Json context = json::Json::object();  // recorded in the manifest as "context"
  // Plaintext chunks that may wait for sealing (rounded to whole chunks). At least one per
  // pipeline thread and four more, as many as the pipeline works on at once: the default, for
  // a producer that can wait. One racing the clock (a frozen process's memory) asks for more.
  uint64_t buffer_bytes = 0;
  // Pipeline threads (each hashes, encrypts or writes, whatever is next). 0: one per core,
  // at least two (so hashing and encryption overlap) and at most eight.
  unsigned sealer_threads = 0;
  // The calling program's I/O policy (none by default); must outlive the writer.
  SealingPolicy* policy = nullptr;
  // Set (e.g. from a signal handler) to stop sealing at the next chunk with an error.
  const std::atomic<bool>* cancel = nullptr;
};

class BundleWriter {
 public:
  // `out` must be a new, empty file. The writer keeps references to `device`.
  static Result<BundleWriter> create(File out, const crypto::SigningKey& device,
                                     const std::vector<crypto::BoxPublicKey>& recipients,
                                     SealParams params);
  BundleWriter(BundleWriter&&) noexcept;
  ~BundleWriter();

  // Allocates and touches chunk buffers for `bytes` of data (capped by buffer_bytes) now, so
  // that filling them later takes no page faults.
  Status prepare_buffers(uint64_t bytes);
  // Fields merged into the manifest's "context" (before finish()).
  void add_context(const json::Json& fields);

  Status begin_stream(const std::string& name, const std::string& source);
  Status write(ByteView data);
  // Zero-copy writing: space in the current chunk for 1..max bytes, to be filled by the
  // caller and followed by commit(n), n <= its size (n = 0 allowed).
  Result<std::span<uint8_t>> buffer(size_t max);
  Status commit(size_t n);
  // Reads `in` to its end into the current stream, without an intermediate copy.
  Status write_from(File& in, Progress* progress);
  // The ended stream as the manifest will list it (size, SHA-256 of the plaintext, ...).
  Result<StreamInfo> end_stream();

  // Writes manifest, signature, custody log (acquired + sealed events, signed by the device
  // key) and the end record, then fsyncs. `acquisition` goes into the acquired event.
  Result<Manifest> finish(json::Json acquisition = json::Json::object());

  const BundleId& bundle_id() const;
  uint64_t bytes_written() const;

 private:
  struct Impl;
  explicit BundleWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlfx::bundle
