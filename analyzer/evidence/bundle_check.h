// Lab-side handling of sealed bundles: full verification with a report, and opening into a
// directory of plain evidence files. Shared by the CLI, the intake server and tests.
//
// The verdict has three values. A valid signature proves only that the holder of the key in
// the manifest sealed the bundle; the manifest's device id is whatever that holder wrote.
// Evidence is attributed to a device only when the lab's trust store binds the signing key to
// that very device id:
//   attributed          every check passed and the trust store binds key and device id
//   identity_unverified the bytes are intact (signature, chunks, custody), but no trust store
//                       was given, so nobody vouches for who signed: the device id is a claim
//   failed              a check failed, including a key the trust store does not hold, a
//                       key it binds to another device id, or a revoked certificate
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/progress.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::evidence {

// One binding of the trust store: the lab vouches that `key_fingerprint` is `device_id`'s key.
struct TrustedDevice {
  std::string device_id;
  std::string key_fingerprint;
  std::string source;                  // the file or certificate that says so
  std::optional<std::string> revoked;  // when and why its certificate was revoked
};

// --trusted-devices DIR: a lab CA directory (`mlfx ca`; its index.jsonl binds each device
// certificate's id to its key, revocations included), or else a folder of device keys, each
// named <device-id>.pub.
Result<std::vector<TrustedDevice>> load_trust_store(const std::string& dir);

enum class Outcome { kPassed, kNotRun, kFailed };
const char* outcome_name(Outcome o);  // "passed", "not run", "failed"

struct CheckLine {
  std::string check;  // "structure", "signature", "device", "chunks", "custody"
  Outcome outcome = Outcome::kFailed;
  std::string detail;  // what passed, why it did not run, or what failed
  bool ok() const { return outcome == Outcome::kPassed; }
};

enum class Verdict { kAttributed, kIdentityUnverified, kFailed };
const char* verdict_name(Verdict v);   // "attributed", "identity_unverified", "failed"
const char* verdict_words(Verdict v);  // "INTACT AND ATTRIBUTED", "INTACT, IDENTITY UNVERIFIED", ...

// The device's own account of its capture, in the signed manifest's context: a target that
// exited during the capture leaves a partial core (zeros where memory could not be read).
// Empty when the capture is complete or the manifest does not say; else what is missing.
std::optional<std::string> incomplete_capture(const bundle::Manifest& m);

struct VerifyReport {
  std::vector<CheckLine> lines;
  // What the signed manifest says of the capture (none: it does not say, e.g. `bundle seal`),
  // and what is missing when it is incomplete: intact evidence of a partial capture is shown
  // beside the verdict, which is about integrity and identity.
  std::optional<bool> capture_complete;
  std::optional<std::string> incomplete_capture;
  // No check failed: the bytes are exactly what the signing key sealed.
  bool intact() const;
  Verdict verdict() const;
  // {"verdict", "intact", "attributed", "checks": [{"check", "result", "ok", "detail"}],
  //  "capture_complete" (true, false, or null when the manifest does not say), and
  //  "capture_incomplete" (what is missing) when it is false}
  json::Json to_json() const;
};

struct VerifyOptions {
  std::string trusted_devices_dir;  // empty: the signer's identity is not verified
  bool show_progress = true;
};

// Runs every check that needs no lab key, stopping at the first failure. The returned
// report lists what passed, what did not run and the failure.
VerifyReport verify_bundle(const std::string& path, const VerifyOptions& options);

// The custody chain as the lab stores it. A bundle in an intake store
// (objects/<digest>.mlfx) has beside it its chain extended by the intake's signed 'received'
// event (<digest>.custody.jsonl) and the intake's signed receipt (<digest>.receipt.json).
struct StoredCustody {
  json::Json events = json::Json::array();  // the whole chain, the bundle's own events first
  json::Json receipt;                       // the receipt as stored; null when there is none
  CheckLine check{"stored custody", Outcome::kNotRun, "not in an intake store"};
  std::optional<custody::CustodyLog> log;   // the stored chain, when it passed
};
StoredCustody stored_custody(const bundle::BundleReader& reader);

struct OpenOptions {
  std::string trusted_devices_dir;
  bool show_progress = true;
};

struct OpenResult {
  std::vector<std::string> files;  // written, relative to the output directory
  VerifyReport report;             // attributed or identity_unverified
};

// Verifies, decrypts and writes every stream plus manifest.json, manifest.sig,
// custody.jsonl (the stored chain with an 'opened' event signed by the lab key) and SHA256SUMS
// into `out_dir`, which must not exist or be empty. On any failure everything written is
// removed again. An identity_unverified bundle is opened; the result and the 'opened' event
// say so.
Result<OpenResult> open_bundle(const std::string& path, const crypto::SecretKeyFile& lab_key,
                               const std::string& out_dir, const OpenOptions& options);

// A stream decrypted for analysis: verified like open_bundle, then decrypted into an
// anonymous in-memory file (memfd) so that no plaintext copy of the evidence lands on disk.
struct DecryptedStream {
  File file;                 // read it through file.path() ("/proc/self/fd/N")
  bundle::Manifest manifest;
  VerifyReport report;
};
Result<DecryptedStream> decrypt_stream_to_memory(const std::string& path, const crypto::SecretKeyFile& lab_key,
                                                 const std::string& stream, const OpenOptions& options);

// Several streams of one bundle, verified once: those of `wanted` that the bundle holds, each
// in its own memfd (a physical capture: image, context, pagemap, kallsyms, BTF). Which of
// them are required is the caller's business: absent ones are simply not in `files`.
struct DecryptedStreams {
  std::vector<std::pair<std::string, File>> files;  // (stream name, plaintext), in `wanted` order
  bundle::Manifest manifest;
  VerifyReport report;
  const File* find(std::string_view name) const;
};
Result<DecryptedStreams> decrypt_streams_to_memory(const std::string& path, const crypto::SecretKeyFile& lab_key,
                                                   const std::vector<std::string>& wanted, const OpenOptions& options);

}  // namespace mlfx::evidence
