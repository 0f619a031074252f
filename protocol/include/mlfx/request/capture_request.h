// Capture requests from the lab (protocol/doc/capture-request.md): `mlfx request capture`
// signs one with a lab request key, the intake hands it to the device it names over the
// mutual-TLS session (wire-protocol.md §12), and the agent honours it once, within its
// lifetime, when a key it trusts signed it.
//
// A signed request is canonical JSON: {"request": {...}, "signer": FINGERPRINT, "signature":
// BASE64}, the signature Ed25519 over "mlfx-capture-request-v1\n" || canonical(request), so no
// other signature of the same key (manifests, custody events) can pass for one. Parsing is
// strict: a bounded size, exactly the known members, each of its type and form.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mlfx/base/bytes.h"
#include "mlfx/base/json.h"
#include "mlfx/base/result.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::request {

inline constexpr uint32_t kRequestVersion = 1;
inline constexpr char kSigningContext[] = "mlfx-capture-request-v1\n";
// The canonical text of a signed request: the most a parser reads of one.
inline constexpr size_t kMaxSignedRequestSize = 4096;
inline constexpr size_t kMaxNameLength = 64;        // device id, target name
inline constexpr size_t kMaxReasonLength = 1024;    // bytes of UTF-8
inline constexpr size_t kMaxRequesterLength = 128;  // bytes of UTF-8
inline constexpr uint32_t kMaxPid = 4194304;        // PID_MAX_LIMIT
// A request lives at most this long (issued_utc to expires_utc).
inline constexpr std::chrono::seconds kMaxLifetime{24 * 3600};

struct CaptureRequest {
  std::string request_id;  // 32 lowercase hex digits, random
  std::string device;      // the device id its certificate carries
  std::string target;      // a target name of the device's configuration; empty when by pid
  uint32_t pid = 0;        // a process id; 0 when by target
  std::string reason;      // why, for the custody log
  std::string requester;   // who asks (a person or a case system)
  std::string nonce;       // 32 lowercase hex digits, random: honoured once
  std::string issued_utc, expires_utc;  // "YYYY-MM-DDTHH:MM:SSZ"
};

struct SignedCaptureRequest {
  CaptureRequest request;
  std::string signer;  // "sha256:" fingerprint of the signing key; the signature decides
  Bytes signature;     // Ed25519 over signing_message(request)

  // The canonical text: what is stored, delivered and hashed.
  std::string text() const;
};

// A new request with a fresh request id and nonce, issued at `issued` (seconds since the
// epoch) and living `ttl`. Exactly one of target and pid (0: none). Checked like a parsed one.
Result<CaptureRequest> make_capture_request(std::string device, std::string target, uint32_t pid,
                                            std::string reason, std::string requester, int64_t issued,
                                            std::chrono::seconds ttl);
// The rules a parsed request meets (names, text, hex, times, lifetime).
Status validate(const CaptureRequest& r);

json::Json to_json(const CaptureRequest& r);
json::Json to_json(const SignedCaptureRequest& s);
// "mlfx-capture-request-v1\n" || canonical(request): what the lab key signs.
Bytes signing_message(const CaptureRequest& r);
Result<SignedCaptureRequest> sign(const CaptureRequest& r, const crypto::SigningKey& key);

// Strict parsers of untrusted input: kBadFormat with what is wrong.
Result<SignedCaptureRequest> parse_signed_request(std::string_view text);
Result<SignedCaptureRequest> signed_request_from_json(const json::Json& j);

// The stateless checks of a request for this device, at `now` (seconds since the epoch):
// signed by one of `signers` (kUntrusted when by none of them, kCorrupt when the named signer's
// signature does not verify), for `device_id` (kUntrusted), issued no more than `max_skew` in
// the future and no more than `max_age` ago, not expired (kInvalidArgument). The nonce is the
// caller's to check (it needs state). Returns the key that signed it.
struct RequestPolicy {
  std::vector<crypto::VerifyKey> signers;
  std::string device_id;
  std::chrono::seconds max_age{300};
  std::chrono::seconds max_skew{60};
};
Result<const crypto::VerifyKey*> check_request(const SignedCaptureRequest& s, const RequestPolicy& policy,
                                               int64_t now);

// Device ids (as the lab CA issues them: 1-64 of A-Z a-z 0-9 . _ -, never "." or "..") and
// target names (the same characters).
bool valid_device_id(std::string_view id);
bool valid_target_name(std::string_view name);
// 32 lowercase hex digits.
bool valid_id128(std::string_view hex);

// "YYYY-MM-DDTHH:MM:SSZ" <-> seconds since the epoch; the parser takes only that exact form of
// a real date and time.
std::string utc_seconds(int64_t t);
Result<int64_t> parse_utc_seconds(std::string_view text);

}  // namespace mlfx::request
