// The agent's spool: sealed bundles waiting to be shipped (store and forward). A directory
// that survives restarts and power loss; every change is a rename or an atomically replaced
// file, so a crash leaves each bundle either queued or not.
//
//   SPOOL/config.json                 {"quota_bytes": N}
//   SPOOL/journal.jsonl               what the spool did on its own (torn captures removed or queued)
//   SPOOL/incoming/                   captures being written (never shipped), each flock'ed by its writer
//   SPOOL/queue/<added>-<id>.mlfx     queued bundles, oldest first by name
//   SPOOL/queue/<...>.mlfx.json       what the shipper knows about each: hash, attempts, errors
//   SPOOL/rejected/                   bundles the intake refused for good (kept for an operator)
//   SPOOL/receipts/<...>.receipt.json the intake's signed receipts of shipped bundles
//
// The spool is the agent's alone: open() refuses a directory (or subdirectory) owned by another
// user or writable by group or others, and every file operation is relative to descriptors of
// the spool's directories with O_NOFOLLOW, so a link planted inside is never followed.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "mlfx/wire/messages.h"

namespace mlfx::agent {

struct SpoolEntry {
  std::string name;  // file name in queue/ or rejected/
  std::string path;  // the bundle (for messages; open it with Spool::open_entry)
  std::string bundle_id, bundle_digest;
  uint64_t file_size = 0;
  uint32_t chunk_size = 0;
  std::string added_utc;
  uint32_t attempts = 0;
  std::string last_attempt_utc, last_error;
  std::string rejected_reason;  // set in rejected/

  json::Json to_json() const;
  static Result<SpoolEntry> from_json(const json::Json& j, const std::string& where);
};

// A capture being written into incoming/. The writer holds an exclusive flock on it for as long
// as `lock` is open: a file in incoming/ that nobody holds is torn (its agent died).
struct IncomingFile {
  std::string name;  // in incoming/
  std::string path;  // for messages
  File file;         // for writing (hand it to the bundle writer)
  File lock;         // a second descriptor of the same open file: keeps the flock after `file` is closed
};

inline constexpr uint64_t kDefaultSpoolQuota = uint64_t(16) << 30;

class Spool {
 public:
  // Opens (creating when missing) the spool at `dir`. A quota given here is stored and
  // applies from now on; otherwise the stored one (default kDefaultSpoolQuota). Refuses a
  // spool that is not the agent's own (owner, permissions, links). Torn captures left in
  // incoming/ by a killed agent are removed, or queued when they are sound sealed bundles;
  // each is journalled and listed in notices().
  static Result<Spool> open(const std::string& dir, std::optional<uint64_t> quota = std::nullopt);

  const std::string& dir() const { return dir_; }
  uint64_t quota() const { return quota_; }
  // What open() did or found that an operator should hear about, one line each.
  const std::vector<std::string>& notices() const { return notices_; }
  // Bytes held by queued, rejected and incoming bundles: what counts against the quota.
  Result<uint64_t> used_bytes() const;
  // Fails when `bytes` more would exceed the quota, saying how to make room.
  Status check_room(uint64_t bytes) const;

  // Queues a sealed bundle: checks its structure and signature, hashes it, copies it in.
  // The source stays untouched. A bundle already queued is not queued twice.
  Result<SpoolEntry> add(const std::string& bundle_path);
  // A new capture file in incoming/ (never replacing one), locked by this process.
  Result<IncomingFile> create_incoming(const std::string& name);
  // Queues a finished capture (moved from incoming/), then releases its lock.
  Result<SpoolEntry> add_incoming(IncomingFile& incoming);
  // Removes an abandoned capture from incoming/.
  void discard_incoming(IncomingFile& incoming);

  // Queued bundles, oldest first; rejected ones. Entries that are not regular files are left out.
  Result<std::vector<SpoolEntry>> queue() const;
  Result<std::vector<SpoolEntry>> rejected() const;
  Result<size_t> receipt_count() const;
  // A queued bundle opened for reading, without following links. Its path() ("/proc/self/fd/N")
  // opens this very file again (for BundleReader::open).
  Result<File> open_entry(const SpoolEntry& e) const;

  Status record_attempt(SpoolEntry& e, const std::string& error);
  // The intake's signed receipt was verified: keep it, drop the bundle.
  Status complete(const SpoolEntry& e, const wire::SignedReceipt& receipt);
  // The intake refused the bundle for good: move it aside for an operator.
  Status reject(SpoolEntry& e, const std::string& reason);

  // One shipper per spool: an exclusive lock held while the returned file is open; kExists
  // when another process holds it.
  Result<File> lock_shipping() const;
  bool shipper_running() const;

 private:
  Spool(std::string dir, uint64_t quota) : dir_(std::move(dir)), quota_(quota) {}
  Status open_directories();
  Status recover_torn_captures();
  Status journal(const json::Json& event);
  const File& sub(const std::string& name) const;
  Result<SpoolEntry> describe_at(const File& dir, const std::string& name) const;
  Result<SpoolEntry> enqueue_from_incoming(const std::string& name);
  Result<std::vector<SpoolEntry>> list(const std::string& sub_name) const;
  Status save(const SpoolEntry& e, const std::string& sub_name) const;

  std::string dir_;
  uint64_t quota_;
  File root_, incoming_, queue_, rejected_, receipts_;
  std::vector<std::string> notices_;
};

}  // namespace mlfx::agent
