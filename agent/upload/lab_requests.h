// Capture requests from the lab, the agent's side (protocol/doc/capture-request.md,
// wire-protocol.md §12).
//
// LabRequestPoller::poll() opens a session to the intake with the [upload] settings (server,
// lab CA, CRL, device certificate and key, intake key pin), takes the requests the lab queued
// for this device, verifies each (verify_lab_request), acknowledges every one to the intake
// (accepted, or refused with the reason) and returns them: each a LabRequest to honour or the
// reason it was refused, for the daemon's log. A request is returned accepted at most once,
// ever: its nonce is on disk before poll() returns it.
//
// poll() blocks (a TLS handshake and a few frames; at most `timeout` without progress); run it
// off the thread that must stay responsive. At most one poller per state directory at a time
// (a lock on the nonce store): on a reload, destroy the old poller before creating a new one.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/config.h"
#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "mlfx/base/result.h"
#include "mlfx/request/capture_request.h"

namespace mlfx::agent {

// A verified request: capture `target` (a [[target]] name; empty when by pid) or `pid`.
struct LabRequest {
  std::string request_id, device, target;
  pid_t pid = 0;  // 0 when by target
  std::string reason, requester, signer_fingerprint, issued_utc, expires_utc, nonce;
  // The lab's signed request as received (canonical JSON): who asked, verifiable by anyone
  // holding the signer's public key. For the capture's manifest and custody log.
  std::string signed_request;
};

// The nonces of honoured requests, each kept until its request has expired (plus the allowed
// clock skew): STATE_DIR/lab-request-nonces.jsonl, one canonical JSON line per nonce
// ({"expires_utc", "nonce", "request_id"}), appended and fsynced before a request is honoured,
// rewritten atomically without the expired ones. STATE_DIR/lab-request-nonces.lock is held
// (flock) while the store is open: one agent per state directory.
class NonceStore {
 public:
  static constexpr size_t kMaxNonces = 10000;  // of unexpired requests

  // Refuses a state directory or file not owned by this user or writable by group or others,
  // and a damaged file (the requests it lists could then be replayed).
  static Result<NonceStore> open(const std::string& state_dir, int64_t now);
  bool seen(const std::string& nonce) const { return live_.contains(nonce); }
  // Records the nonce of a request expiring at `expires` (seconds since the epoch), durably;
  // forgets those of requests that expired more than kForgetAfter before `now`.
  Status record(const std::string& nonce, const std::string& request_id, int64_t expires, int64_t now);
  size_t size() const { return live_.size(); }
  const std::string& path() const { return path_; }

  static constexpr std::chrono::seconds kForgetAfter{60};

 private:
  struct Entry {
    std::string request_id;
    int64_t expires = 0;
  };
  NonceStore(std::string path, File lock) : path_(std::move(path)), lock_(std::move(lock)) {}
  Status load(int64_t now);
  Status rewrite();
  size_t forget_expired(int64_t now);

  std::string path_;
  File lock_;    // flock'ed for the store's life
  File append_;  // O_APPEND descriptor of path_
  std::map<std::string, Entry> live_;
  size_t lines_ = 0;  // lines in the file, live or not
};

// The verifier. Parses the signed request strictly (bounded by
// request::kMaxSignedRequestSize), checks it with request::check_request (a configured signer,
// its signature, this device, issued at most max_skew ahead and max_age ago, not expired) and
// that its nonce was never honoured, then records the nonce. A refusal is an Error whose
// message names the request (when readable) and says why: kBadFormat (malformed), kUntrusted
// (unknown signer, another device), kCorrupt (bad signature), kInvalidArgument (expired, too
// old, from the future), kExists (replayed), or the nonce store's failure.
Result<LabRequest> verify_lab_request(const json::Json& signed_request, const request::RequestPolicy& policy,
                                      NonceStore& nonces, int64_t now);
Result<LabRequest> verify_lab_request(std::string_view signed_request_text, const request::RequestPolicy& policy,
                                      NonceStore& nonces, int64_t now);

class LabRequestPoller {
 public:
  // Loads the device key (its fingerprint must be what the intake sees), the lab CA, CRL and
  // signer keys, and opens the nonce store in `state_dir` (the spool directory). `device_id` is
  // this device's id ([agent] device_id): the one its certificate carries.
  static Result<LabRequestPoller> create(const daemon::UploadSpec& upload, const daemon::LabRequestSpec& spec,
                                         const std::string& device_id, const std::string& state_dir,
                                         std::chrono::milliseconds timeout = std::chrono::seconds(30));
  LabRequestPoller(LabRequestPoller&&) noexcept;
  LabRequestPoller& operator=(LabRequestPoller&&) noexcept;
  ~LabRequestPoller();

  // One session with the intake: every request pending for this device, verified or refused
  // (at most 128 per poll; the rest wait for the next). Fails as a whole when the intake cannot
  // be reached or trusted, does not deliver requests, knows this device under another id, or
  // breaks the protocol; requests verified before such a failure are still returned (their
  // acknowledgement may not have reached the intake, which then offers them again: they are
  // refused as replays).
  Result<std::vector<Result<LabRequest>>> poll();

  const std::string& nonce_store_path() const;

 private:
  struct State;
  explicit LabRequestPoller(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace mlfx::agent
