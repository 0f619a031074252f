// The lab certificate authority for the intake's mutual TLS (wire-protocol.md §2).
//
// A CA directory holds:
//   ca.key       Ed25519 PKCS#8 PEM, mode 0600, created once (O_EXCL), never overwritten
//   ca.pem       the self-signed CA certificate
//   crl.pem      the CRL, always signed and current; its CRL number is the only counter
//   index.jsonl  one JSON object per issued certificate (IndexEntry), in issue order
//   certs/       a copy of every issued certificate, SERIAL.pem
// Serials are 16 random bytes (positive), unique within the index. Index and CRL are
// replaced atomically (temp file, fsync, rename); every change holds an flock on the directory.
//
// A certificate's public key is an mlfx key from `mlfx keys gen --kind device`: for a device
// it is the device's signing key, so the TLS identity fingerprint equals the bundle manifest's
// device.key_fingerprint; for the intake it is the intake's own signing key (the one that
// signs receipts). Lab keys are refused: their X25519 part opens evidence and has no place
// on a network-facing host.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx::pki {

inline constexpr int kDefaultCaDays = 3650;
inline constexpr int kDefaultCertDays = 365;
inline constexpr int kCrlDays = 30;
// not_before is set this far in the past, so devices with a slightly slow clock accept it.
inline constexpr int64_t kClockSkewSeconds = 300;

enum class CertKind { kDevice, kServer };
const char* cert_kind_name(CertKind k);

struct IndexEntry {
  std::string serial;  // lowercase hex, 32 digits
  CertKind kind = CertKind::kDevice;
  std::string id;  // device id, or the server's names joined by ','
  std::string key_fingerprint;
  std::string not_before, not_after;  // "2026-11-22T02:30:00Z"
  std::optional<std::string> revoked_utc, reason;
};

struct CaInitOptions {
  std::string dir;
  std::string name = "mlfx lab CA";
  int days = kDefaultCaDays;
};

// Creates DIR (or uses it if empty): key, certificate, empty CRL, empty index.
Status init_ca(const CaInitOptions& options);

struct IssueOptions {
  CertKind kind = CertKind::kDevice;
  std::string public_key_path;     // a device-kind .pub from `mlfx keys gen`
  std::string id;                  // kDevice: the device id
  std::vector<std::string> names;  // kServer: DNS names and IP addresses
  int days = kDefaultCertDays;
  std::string out;  // certificate to create (never replaced)
  // Test hook: the certificate's notBefore as Unix time (default: now - kClockSkewSeconds).
  std::optional<int64_t> not_before;
};

// Issues, records in the index and writes options.out.
Result<IndexEntry> issue_certificate(const std::string& ca_dir, const IssueOptions& options);

// Exactly one of serial (hex, any case, colons allowed) or certificate PEM.
struct RevokeTarget {
  std::optional<std::string> serial;
  std::optional<std::string> certificate_pem;
};

// Marks the certificate revoked in the index and publishes a new CRL. `reason` is free text;
// an RFC 5280 reason name (keyCompromise, superseded, ...) also sets the CRL entry's reasonCode.
Result<IndexEntry> revoke_certificate(const std::string& ca_dir, const RevokeTarget& target,
                                      const std::string& reason);

// Re-signs the CRL with a new number and nextUpdate (it must be refreshed within kCrlDays).
Status refresh_crl(const std::string& ca_dir);

Result<std::vector<IndexEntry>> list_certificates(const std::string& ca_dir);

// "sha256:" + hex SHA-256 of the certificate's SubjectPublicKeyInfo DER: the same format as
// the key fingerprints of mlfx/crypto/keys.h.
Result<std::string> certificate_key_fingerprint(const std::string& pem);

}  // namespace mlfx::pki
