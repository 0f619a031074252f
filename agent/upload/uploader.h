// The agent's uploader: ships the spool's bundles to the lab intake over mutual TLS
// (wire-protocol.md). A pass connects once and uploads the queue oldest first, sending only
// the units the intake does not hold yet, and drops a bundle from the spool only after the
// intake's signed receipt for exactly that file has been verified.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "mlfx/base/json.h"
#include "mlfx/transport/tls.h"
#include "mlfx/wire/messages.h"
#include "upload/spool.h"

namespace mlfx::agent {

struct IntakeTarget {
  std::string host;
  uint16_t port = 7443;
  transport::TlsFiles tls;  // ca, cert (the device certificate), key (the device key), crl (the lab CA's
                            // CRL: a revoked intake certificate is refused; empty: not checked)
  std::string intake_key_fingerprint;  // optional pin of the receipt key, beyond the lab CA
  uint64_t bandwidth = 0;              // bytes per second, 0: unlimited
  std::chrono::milliseconds timeout{60000};  // without progress, a connection is given up
};

// How one bundle went.
struct UploadOutcome {
  std::string name, bundle_id;
  std::string result;  // "stored", "duplicate", "rejected", "failed"
  std::string error;   // why, when not stored
  std::optional<wire::WireError> code;  // the intake's error code, when it refused
  uint64_t held_before = 0, sent_bytes = 0, file_size = 0;
  size_t sent_units = 0;
  double seconds = 0;
  bool crl_checked = false;  // the intake's certificate was checked against the lab CA's CRL
  json::Json to_json() const;
};

struct PassReport {
  std::vector<UploadOutcome> uploads;
  bool ok = true;  // nothing left that should be retried
  std::string error;  // the failure that ended the pass early (connection, intake, spool)
  json::Json to_json() const;
};

using UploadEvents = std::function<void(const UploadOutcome&)>;

// One pass over the queue. Retryable failures (a cut link, store_failed, busy...) end the pass
// with ok=false and count as an attempt on the bundle; a permanent refusal (wrong_device,
// bad_bundle) moves the bundle to rejected/ and the pass goes on.
PassReport ship_pass(Spool& spool, const IntakeTarget& target, const UploadEvents& on_upload);

// Exponential backoff with full jitter: a uniform delay in [0, min(cap, base * 2^failures)].
std::chrono::milliseconds backoff_delay(unsigned failures, std::chrono::milliseconds base,
                                        std::chrono::milliseconds cap);

}  // namespace mlfx::agent
