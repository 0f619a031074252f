// The intake's evidence store (wire-protocol.md §5-7): uploads in progress as partial files
// at their final offsets, verified unit by unit; finished bundles as write-once,
// content-addressed objects with the custody log extended by a signed 'received' event and
// the signed receipt. Thread-safe: many connections share one store.
//
//   DIR/objects/<digest>.mlfx            the bundle, byte for byte, mode 0440, never replaced
//   DIR/objects/<digest>.custody.jsonl   its custody log + 'received' (the bundle is not touched)
//   DIR/objects/<digest>.receipt.json    the signed receipt; written last, so it marks "stored"
//   DIR/partial/<device>/<bundle>-<digest>.part / .meta.json   uploads in progress
//   DIR/journal.jsonl                     the store's own signed notes (expired uploads, delivered
//                                         capture requests)
// <digest> is the bundle digest (bundle-format.md §18), which names the whole file.
// An upload holds no reserved space until its metadata verifies (signature, device binding,
// digest); one whose metadata never verified is not kept once its connection lets go of it.
#pragma once

#include <chrono>
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
#include "mlfx/transport/frame_buffer.h"
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
  // Disk held by unfinished uploads (wire-protocol.md §5.4): each counts its metadata
  // allowance until the metadata verifies, then its whole size, reserved with posix_fallocate.
  uint64_t max_reserved = uint64_t(1) << 40;               // all devices together
  uint64_t max_reserved_per_device = uint64_t(256) << 30;  // one device
  uint64_t device_quota = 0;  // a device's stored bundles and unfinished uploads; 0: no quota
  std::chrono::seconds partial_ttl{7 * 24 * 3600};  // an unfinished upload untouched this long is removed
};

// The most metadata (every unit that is not a chunk record, together) a bundle of this offer
// can have: a 48-byte chunk table entry per chunk (at most file_size / chunk_size, plus one
// per stream), table headers, and 4 MiB for the header, manifest, signature, custody log and
// end. Until the metadata verifies, an upload holds no more on disk than this, and no RECORD
// may be larger than metadata_unit_limit.
uint64_t metadata_allowance(const wire::Offer& offer);
uint64_t metadata_unit_limit(const wire::Offer& offer);
// The largest RECORD body (offset and unit) for the chunks of this offer.
uint64_t chunk_record_limit(const wire::Offer& offer);

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
  // `storage`, when given, holds `unit` (the connection's frame buffer): a chunk record's
  // storage is then taken, not copied, and a spare buffer (or an empty one) put in its place.
  WireResult<void> accept(uint64_t offset, ByteView unit, transport::FrameBuffer* storage = nullptr);
  bool complete();
  // The metadata arrived and verified: the space is reserved and only chunks remain.
  bool verified() const { return metadata_.has_value(); }
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
  Status write_chunk(uint64_t offset, ByteView unit);
  bool write_direct(uint64_t offset, ByteView aligned, Status* st);
  WireResult<void> submit_chunk(size_t index, ByteView unit, transport::FrameBuffer* storage);
  WireResult<void> drain();
  void check_chunks();
  void write_chunks();
  void sync_chunks();
  void stop_worker();
  // Between connections: waits for the record in flight, then frees the worker and its buffer.
  void release_resources();

  EvidenceStore* store_ = nullptr;
  std::string key_;  // partial path without extension
  wire::Offer offer_;
  std::string device_fingerprint_, device_id_;
  File file_;
  std::vector<uint64_t> pending_metadata_;  // offsets received before the metadata was checked
  uint64_t pending_metadata_bytes_ = 0;
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
    transport::FrameBuffer storage;
    ByteView unit;  // in storage, at an address congruent to its offset modulo kIoAlignment
  };
  std::mutex work_mu_;  // guards the jobs, the error and the units' held state
  std::condition_variable work_cv_;
  std::optional<Job> to_check_, to_write_;
  std::vector<transport::FrameBuffer> spares_;  // buffers of finished jobs, reused
  // The writer's descriptor of the partial opened with O_DIRECT: chunk records go to the disk
  // from their buffers, not through the page cache. Closed (and not tried again) where the
  // file system refuses direct I/O.
  File direct_;
  bool direct_tried_ = false;
  // A third thread syncs what was written every few hundred MiB (sync_chunks).
  File sync_file_;
  uint64_t unsynced_bytes_ = 0;
  std::optional<wire::ErrorMessage> work_error_;
  bool work_stop_ = false;
  std::thread checker_, writer_, syncer_;
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
  // too_many_partials, over_quota (the device's reservation cap or quota), store_failed (the
  // intake's reservation cap).
  WireResult<Claim> begin(const Uploader& who, const wire::Offer& offer);
  // Stores a complete upload (wire-protocol.md §7) and returns the signed receipt.
  WireResult<wire::SignedReceipt> commit(Claim& claim, const Uploader& who, const std::string& started_utc);
  // Deletes an upload that failed verification.
  void discard(Claim& claim);
  // Removes the unfinished uploads no connection holds that were untouched for
  // limits().partial_ttl, each with a signed 'partial_expired' note in DIR/journal.jsonl (an
  // unfinished upload is not evidence yet: it has no custody log of its own). Returns the
  // notes, for the server's log.
  std::vector<json::Json> expire_partials();
  // The largest bundle this intake can take from one device now and then (for WELCOME).
  uint64_t max_bundle() const;
  // Appends a note signed by the intake key to DIR/journal.jsonl (wire-protocol.md §7a),
  // chained to the note before, fsynced.
  Status journal(const std::string& type, json::Json details);

 private:
  friend class PartialUpload;
  struct Charge {
    std::string device;  // key fingerprint hex
    uint64_t bytes = 0;
  };
  EvidenceStore(std::string dir, crypto::SigningKey key, custody::Actor actor, StoreLimits limits, DirLock lock)
      : dir_(std::move(dir)), key_(std::move(key)), actor_(std::move(actor)), limits_(limits), lock_(std::move(lock)) {}
  void tidy();
  void load_charges();
  // Sets the bytes `key` holds against the caps (with mu_ held); refuses a raise over one.
  WireResult<void> charge(const std::string& key, const std::string& device, uint64_t bytes);
  void uncharge(const std::string& key);  // with mu_ held
  // At verification: charges the whole bundle and reserves its space.
  WireResult<void> reserve(PartialUpload& p);
  // A connection let go of `p`: kept when verified, else removed.
  void release(PartialUpload& p);
  void remove_partial_files(const std::string& key);
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
  std::map<std::string, Charge> charges_;                          // by key: unfinished uploads
  std::map<std::string, uint64_t> reserved_by_device_, stored_by_device_;
  uint64_t reserved_total_ = 0;
  std::mutex journal_mu_;
  std::string journal_prev_;  // hash of the journal's last line
};

// "sha256:<hex>" -> "<hex>", for file names.
std::string fingerprint_hex(const std::string& fingerprint);

}  // namespace mlfx::intake
