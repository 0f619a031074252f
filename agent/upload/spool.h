// The agent's spool: sealed bundles waiting to be shipped (store and forward). A directory
// that survives restarts and power loss; every change is a rename or an atomically replaced
// file, so a crash leaves each bundle either queued or not.
//
//   SPOOL/config.json                 {"quota_bytes": N}
//   SPOOL/incoming/                   captures being written (never shipped)
//   SPOOL/queue/<added>-<id>.mlfx     queued bundles, oldest first by name
//   SPOOL/queue/<...>.mlfx.json       what the shipper knows about each: hash, attempts, errors
//   SPOOL/rejected/                   bundles the intake refused for good (kept for an operator)
//   SPOOL/receipts/<...>.receipt.json the intake's signed receipts of shipped bundles
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
  std::string path;  // the bundle
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

inline constexpr uint64_t kDefaultSpoolQuota = uint64_t(16) << 30;

class Spool {
 public:
  // Opens (creating when missing) the spool at `dir`. A quota given here is stored and
  // applies from now on; otherwise the stored one (default kDefaultSpoolQuota).
  static Result<Spool> open(const std::string& dir, std::optional<uint64_t> quota = std::nullopt);

  const std::string& dir() const { return dir_; }
  uint64_t quota() const { return quota_; }
  // Bytes held by queued, rejected and incoming bundles: what counts against the quota.
  Result<uint64_t> used_bytes() const;
  // Fails when `bytes` more would exceed the quota, saying how to make room.
  Status check_room(uint64_t bytes) const;

  // Queues a sealed bundle: checks its structure and signature, hashes it, copies it in
  // (or moves it, from incoming/). The source stays untouched when copied. A bundle already
  // queued is not queued twice.
  Result<SpoolEntry> add(const std::string& bundle_path);
  // Where a capture writes its bundle before add_incoming() queues it.
  std::string incoming_path(const std::string& name) const;
  Result<SpoolEntry> add_incoming(const std::string& incoming);

  // Queued bundles, oldest first; rejected ones.
  Result<std::vector<SpoolEntry>> queue() const;
  Result<std::vector<SpoolEntry>> rejected() const;
  Result<size_t> receipt_count() const;

  Status record_attempt(SpoolEntry& e, const std::string& error);
  // The intake's signed receipt was verified: keep it, drop the bundle.
  Status complete(const SpoolEntry& e, const wire::SignedReceipt& receipt);
  // The intake refused the bundle for good: move it aside for an operator.
  Status reject(SpoolEntry& e, const std::string& reason);

 private:
  Spool(std::string dir, uint64_t quota) : dir_(std::move(dir)), quota_(quota) {}
  Result<SpoolEntry> enqueue(const std::string& source, bool move);
  Result<std::vector<SpoolEntry>> list(const std::string& sub) const;
  Status save(const SpoolEntry& e, const std::string& sub) const;

  std::string dir_;
  uint64_t quota_;
};


}  // namespace mlfx::agent
