// Lab-side handling of sealed bundles: full verification with a report, and opening into a
// directory of plain evidence files. Shared by the CLI, the intake server and tests.
#pragma once

#include <string>
#include <vector>

#include "mlfx/base/progress.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::evidence {

// Every *.pub in `dir` that holds a device (Ed25519) key.
Result<std::vector<crypto::VerifyKey>> load_trusted_devices(const std::string& dir);

struct CheckLine {
  std::string check;   // "structure", "signature", "device", "chunks", "custody"
  bool ok = false;
  std::string detail;  // what passed, or what failed
};

struct VerifyReport {
  std::vector<CheckLine> lines;
  bool intact() const;
  json::Json to_json() const;
};

struct VerifyOptions {
  std::string trusted_devices_dir;  // empty: signer identity not checked against a trust store
  bool show_progress = true;
};

// Runs every check that needs no lab key, stopping at the first failure. The returned
// report lists what passed and the failure; the error is for I/O problems only.
VerifyReport verify_bundle(const std::string& path, const VerifyOptions& options);

struct OpenOptions {
  std::string trusted_devices_dir;
  bool show_progress = true;
};

struct OpenResult {
  std::vector<std::string> files;  // written, relative to the output directory
};

// Verifies, decrypts and writes every stream plus manifest.json, manifest.sig,
// custody.jsonl (with an 'opened' event signed by the lab key) and SHA256SUMS into `out_dir`,
// which must not exist or be empty. On any failure everything written is removed again.
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

}  // namespace mlfx::evidence
