// The intake's evidence store (wire-protocol.md §5-7): uploads in progress as partial files
// at their final offsets, verified unit by unit; finished bundles as write-once,
// content-addressed objects with the custody log extended by a signed 'received' event and
// the signed receipt. Thread-safe: many connections share one store.
//
//   DIR/objects/<digest>.mlfx            the bundle, byte for byte, mode 0440, never replaced
//   DIR/objects/<digest>.custody.jsonl   its custody log + 'received' (the bundle is not touched)
//   DIR/objects/<digest>.receipt.json    the signed receipt; written last, so it marks "stored"
//   DIR/partial/<device>/<bundle>-<digest>.part / .meta.json   uploads in progress
// <digest> is the bundle digest (bundle-format.md §18), which names the whole file.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/file.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/crypto/hash.h"
#include "mlfx/custody/custody_log.h"
#include "mlfx/wire/messages.h"

namespace mlfx::intake {

template <class T>
using WireResult = tl::expected<T, wire::ErrorMessage>;

// The device on a connection, from its verified client certificate (wire-protocol.md §2).
struct Uploader {
  std::string device_id;
  std::string key_fingerprint;  // "sha256:..." of the certificate key = the device key
  std::string certificate_serial;
  std::string address;  // peer address:port, for the custody record
};

struct StoreLimits {
  uint64_t max_bundle = uint64_t(1) << 40;
  size_t max_partials_per_device = 8;
};

class EvidenceStore;

// One bundle being received. Held by one connection at a time (EvidenceStore::Claim).
class PartialUpload {
 public:
  PartialUpload() = default;
  PartialUpload(const PartialUpload&) = delete;
  PartialUpload& operator=(const PartialUpload&) = delete;
  ~PartialUpload();

  // The byte ranges held and verified (after the unit in flight, if any).
  std::vector<wire::ByteRange> held();
  // Checks one unit (wire-protocol.md §5) and writes it at its offset. Units already held are
  // accepted and ignored. bad_record for a unit that is not one of the bundle's; bad_bundle /
  // wrong_device when the metadata fails (the upload is then discarded by the store).
  // Chunk records are checked and written by two worker threads while the connection reads
  // the next one; a bad one is reported by a later call. The last one is waited for.
  WireResult<void> accept(uint64_t offset, ByteView unit);
  bool complete();
  const wire::Offer& offer() const { return offer_; }
  uint64_t accepted_bytes() const { return accepted_bytes_; }  // by this process, for logs

 private:
  friend class EvidenceStore;
  struct UnitState {
    uint64_t offset = 0, size = 0;
    const bundle::ChunkEntry* chunk = nullptr;  // null for metadata units
    bool held = false;
  };

  WireResult<void> accept_metadata(uint64_t offset, ByteView unit);
  WireResult<void> check_metadata();
  Status load_metadata(const std::vector<uint64_t>& offsets);
  Status rebuild_held();
  void mark_held(size_t index);  // with work_mu_ held
  Status write_unit(uint64_t offset, ByteView unit);
  WireResult<void> submit_chunk(size_t index, ByteView unit);
  WireResult<void> drain();
  void check_chunks();
  void write_chunks();
  void stop_worker();
  // Between connections: waits for the record in flight, then frees the worker and its buffer.
  void release_resources();

  std::string key_;  // partial path without extension
  wire::Offer offer_;
  std::string device_fingerprint_;
  File file_;
  std::vector<uint64_t> pending_metadata_;  // offsets received before the metadata was checked
  std::optional<bundle::BundleReader> metadata_;
  std::vector<UnitState> units_;  // every unit in file order, once the metadata is checked
  std::map<uint64_t, size_t> unit_at_;
  size_t held_units_ = 0;
  uint64_t accepted_bytes_ = 0;
  bool claimed_ = false;

  // Chunk records pass two stages off the connection's thread, one record each: a checker
  // (SHA-256 against the signed table) and a writer (pwrite), so that hashing a record
  // overlaps writing the one before it. A record is written only after it was checked.
  struct Job {
    size_t index = 0;
    Bytes bytes;
  };
  std::mutex work_mu_;  // guards the jobs, the error and the units' held state
  std::condition_variable work_cv_;
  std::optional<Job> to_check_, to_write_;
  std::vector<Bytes> spares_;  // buffers of finished jobs, reused
  std::optional<wire::ErrorMessage> work_error_;
  bool work_stop_ = false;
  std::thread checker_, writer_;
};

class EvidenceStore {
 public:
  // Creates DIR/objects and DIR/partial when missing, and holds DIR locked (one intake per
  // store); tidies what a killed intake left.
  static Result<std::unique_ptr<EvidenceStore>> open(const std::string& dir, crypto::SigningKey intake_key,
                                                     custody::Actor intake, StoreLimits limits);
  const std::string& dir() const { return dir_; }
  const crypto::VerifyKey& intake_key() const { return key_.public_key(); }
  const StoreLimits& limits() const { return limits_; }

  // The signed receipt of a stored bundle, if it is stored.
  std::optional<wire::SignedReceipt> find(const std::string& bundle_digest) const;

  // A connection's hold on one upload; released when destroyed.
  class Claim {
   public:
    Claim(EvidenceStore* store, std::shared_ptr<PartialUpload> upload)
        : store_(store), upload_(std::move(upload)) {}
    Claim(Claim&& o) noexcept = default;
    Claim& operator=(Claim&& o) noexcept;
    ~Claim();
    explicit operator bool() const { return upload_ != nullptr; }  // false once discarded
    PartialUpload& operator*() const { return *upload_; }
    PartialUpload* operator->() const { return upload_.get(); }

   private:
    friend class EvidenceStore;
    void release();
    EvidenceStore* store_ = nullptr;
    std::shared_ptr<PartialUpload> upload_;
  };

  // Starts or resumes `who`'s upload of `offer`: busy when another connection holds it,
  // too_many_partials, store_failed when the space cannot be reserved.
  WireResult<Claim> begin(const Uploader& who, const wire::Offer& offer);
  // Stores a complete upload (wire-protocol.md §7) and returns the signed receipt.
  WireResult<wire::SignedReceipt> commit(Claim& claim, const Uploader& who, const std::string& started_utc);
  // Deletes an upload that failed verification.
  void discard(Claim& claim);

 private:
  EvidenceStore(std::string dir, crypto::SigningKey key, custody::Actor actor, StoreLimits limits, DirLock lock)
      : dir_(std::move(dir)), key_(std::move(key)), actor_(std::move(actor)), limits_(limits), lock_(std::move(lock)) {}
  void tidy();
  std::string object_path(const std::string& sha, const char* suffix) const;
  Status open_partial(const Uploader& who, const wire::Offer& offer, const std::string& key,
                      PartialUpload& upload);
  Status write_custody_and_receipt(PartialUpload& p, const Uploader& who, const std::string& started_utc,
                                   wire::SignedReceipt* out, std::vector<std::string>* created);

  std::string dir_;
  crypto::SigningKey key_;
  custody::Actor actor_;
  StoreLimits limits_;
  DirLock lock_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<PartialUpload>> uploads_;  // by key, across connections
};

// "sha256:<hex>" -> "<hex>", for file names.
std::string fingerprint_hex(const std::string& fingerprint);

}  // namespace mlfx::intake
