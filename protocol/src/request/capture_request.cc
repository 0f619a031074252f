#include "mlfx/request/capture_request.h"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <set>

#include "mlfx/base/printable.h"
#include "mlfx/crypto/aead.h"

namespace mlfx::request {
namespace {

const std::set<std::string> kRequestMembers = {"version", "kind",      "request_id", "device",
                                               "target",  "pid",       "reason",     "requester",
                                               "nonce",   "issued_utc", "expires_utc"};
const std::set<std::string> kEnvelopeMembers = {"request", "signer", "signature"};

Status only_known_members(const json::Json& j, const std::set<std::string>& known, const std::string& where) {
  if (!j.is_object()) return fail(Errc::kBadFormat, where + " must be a JSON object");
  for (const auto& [key, value] : j.items())
    if (!known.contains(key))
      return fail(Errc::kBadFormat, where + ": unknown field '" + printable(key) + "' (version " +
                                        std::to_string(kRequestVersion) + " has no such field)");
  return {};
}

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}

// Text that reaches logs, custody and terminals as it is: valid UTF-8 without control
// characters or bidirectional overrides. printable() escapes exactly those (and doubles each
// backslash), so clean text grows by its backslashes alone.
bool clean_text(std::string_view s) {
  return printable(s).size() == s.size() + static_cast<size_t>(std::count(s.begin(), s.end(), '\\'));
}

Status check_text(std::string_view value, const char* field, size_t max) {
  if (value.empty() || value.size() > max)
    return fail(Errc::kBadFormat, std::string("capture request: ") + field + " must be 1 to " + std::to_string(max) +
                                      " bytes, not " + std::to_string(value.size()));
  if (!clean_text(value))
    return fail(Errc::kBadFormat, std::string("capture request: ") + field +
                                      " must be UTF-8 text without control characters or direction overrides");
  return {};
}

}  // namespace

bool valid_device_id(std::string_view id) {
  return !id.empty() && id.size() <= kMaxNameLength && id != "." && id != ".." &&
         std::all_of(id.begin(), id.end(), name_char);
}

bool valid_target_name(std::string_view name) { return valid_device_id(name); }

namespace {
bool lower_hex(std::string_view hex, size_t digits) {
  return hex.size() == digits &&
         std::all_of(hex.begin(), hex.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}
}  // namespace

bool valid_id128(std::string_view hex) { return lower_hex(hex, 32); }

std::string utc_seconds(int64_t t) {
  const time_t tt = static_cast<time_t>(t);
  tm parts{};
  gmtime_r(&tt, &parts);
  char buf[64];  // room for any year gmtime_r gives
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", parts.tm_year + 1900, parts.tm_mon + 1,
                parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec);
  return buf;
}

Result<int64_t> parse_utc_seconds(std::string_view text) {
  auto bad = [&] {
    return fail(Errc::kBadFormat, "'" + printable(text) + "' is not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ");
  };
  static constexpr std::string_view kForm = "0000-00-00T00:00:00Z";
  if (text.size() != kForm.size()) return bad();
  for (size_t i = 0; i < kForm.size(); ++i) {
    const bool digit = text[i] >= '0' && text[i] <= '9';
    if (kForm[i] == '0' ? !digit : text[i] != kForm[i]) return bad();
  }
  auto number = [&](size_t at, size_t n) {
    int v = 0;
    for (size_t i = at; i < at + n; ++i) v = v * 10 + (text[i] - '0');
    return v;
  };
  tm parts{};
  parts.tm_year = number(0, 4) - 1900;
  parts.tm_mon = number(5, 2) - 1;
  parts.tm_mday = number(8, 2);
  parts.tm_hour = number(11, 2);
  parts.tm_min = number(14, 2);
  parts.tm_sec = number(17, 2);
  const int64_t t = static_cast<int64_t>(timegm(&parts));
  // timegm normalises (February 30 becomes March 2): a real date prints back as it was given.
  if (utc_seconds(t) != text) return bad();
  return t;
}

std::string SignedCaptureRequest::text() const { return json::canonical(to_json(*this)); }

Status validate(const CaptureRequest& r) {
  if (!valid_id128(r.request_id))
    return fail(Errc::kBadFormat, "capture request: request_id must be 32 lowercase hex digits");
  if (!valid_device_id(r.device))
    return fail(Errc::kBadFormat, "capture request: device '" + printable(r.device) +
                                      "' is not a device id (1 to 64 of A-Z a-z 0-9 . _ -)");
  if (r.target.empty() == (r.pid == 0))
    return fail(Errc::kBadFormat, "capture request: give exactly one of target and pid");
  if (!r.target.empty() && !valid_target_name(r.target))
    return fail(Errc::kBadFormat, "capture request: target '" + printable(r.target) +
                                      "' is not a target name (1 to 64 of A-Z a-z 0-9 . _ -)");
  if (r.pid > kMaxPid)
    return fail(Errc::kBadFormat, "capture request: pid " + std::to_string(r.pid) + " is above the kernel's limit " +
                                      std::to_string(kMaxPid));
  MLFX_TRY(check_text(r.reason, "reason", kMaxReasonLength));
  MLFX_TRY(check_text(r.requester, "requester", kMaxRequesterLength));
  if (!valid_id128(r.nonce)) return fail(Errc::kBadFormat, "capture request: nonce must be 32 lowercase hex digits");
  MLFX_ASSIGN(int64_t issued, parse_utc_seconds(r.issued_utc));
  MLFX_ASSIGN(int64_t expires, parse_utc_seconds(r.expires_utc));
  if (expires <= issued || expires - issued > kMaxLifetime.count())
    return fail(Errc::kBadFormat, "capture request: expires_utc must come after issued_utc, by at most " +
                                      std::to_string(kMaxLifetime.count()) + " s");
  return {};
}

Result<CaptureRequest> make_capture_request(std::string device, std::string target, uint32_t pid,
                                            std::string reason, std::string requester, int64_t issued,
                                            std::chrono::seconds ttl) {
  CaptureRequest r;
  r.request_id = to_hex(crypto::random_bytes(16));
  r.nonce = to_hex(crypto::random_bytes(16));
  r.device = std::move(device);
  r.target = std::move(target);
  r.pid = pid;
  r.reason = std::move(reason);
  r.requester = std::move(requester);
  r.issued_utc = utc_seconds(issued);
  r.expires_utc = utc_seconds(issued + ttl.count());
  MLFX_TRY(validate(r));
  return r;
}

json::Json to_json(const CaptureRequest& r) {
  json::Json j = {{"version", kRequestVersion}, {"kind", "capture"},  {"request_id", r.request_id},
                  {"device", r.device},         {"reason", r.reason}, {"requester", r.requester},
                  {"nonce", r.nonce},           {"issued_utc", r.issued_utc}, {"expires_utc", r.expires_utc}};
  if (r.pid) j["pid"] = r.pid;
  else j["target"] = r.target;
  return j;
}

json::Json to_json(const SignedCaptureRequest& s) {
  return {{"request", to_json(s.request)}, {"signer", s.signer}, {"signature", to_base64(s.signature)}};
}

Bytes signing_message(const CaptureRequest& r) {
  const std::string text = std::string(kSigningContext) + json::canonical(to_json(r));
  return Bytes(text.begin(), text.end());
}

Result<SignedCaptureRequest> sign(const CaptureRequest& r, const crypto::SigningKey& key) {
  MLFX_TRY(validate(r));
  SignedCaptureRequest s{r, key.public_key().fingerprint(), {}};
  MLFX_ASSIGN(s.signature, key.sign(signing_message(r)));
  if (s.text().size() > kMaxSignedRequestSize)
    return fail(Errc::kInvalidArgument, "the signed request would be " + std::to_string(s.text().size()) +
                                            " bytes, over the limit of " + std::to_string(kMaxSignedRequestSize) +
                                            ": shorten the reason or the requester");
  return s;
}

Result<SignedCaptureRequest> signed_request_from_json(const json::Json& j) {
  const std::string where = "capture request";
  MLFX_TRY(only_known_members(j, kEnvelopeMembers, where));
  MLFX_ASSIGN(const json::Json* body, json::get_object(j, "request", where));
  MLFX_TRY(only_known_members(*body, kRequestMembers, where));
  MLFX_ASSIGN(uint64_t version, json::get_uint(*body, "version", where));
  if (version != kRequestVersion)
    return fail(Errc::kBadFormat, where + " of version " + std::to_string(version) + ": this tool reads version " +
                                      std::to_string(kRequestVersion));
  MLFX_ASSIGN(std::string kind, json::get_string(*body, "kind", where));
  if (kind != "capture") return fail(Errc::kBadFormat, where + ": kind '" + printable(kind) + "' is not 'capture'");
  SignedCaptureRequest s;
  CaptureRequest& r = s.request;
  MLFX_ASSIGN(r.request_id, json::get_string(*body, "request_id", where));
  MLFX_ASSIGN(r.device, json::get_string(*body, "device", where));
  if (body->contains("target") == body->contains("pid"))
    return fail(Errc::kBadFormat, where + ": give exactly one of target and pid");
  if (body->contains("target")) {
    MLFX_ASSIGN(r.target, json::get_string(*body, "target", where));
  } else {
    MLFX_ASSIGN(uint64_t pid, json::get_uint(*body, "pid", where));
    if (pid == 0 || pid > kMaxPid)
      return fail(Errc::kBadFormat, where + ": pid must be 1 to " + std::to_string(kMaxPid));
    r.pid = static_cast<uint32_t>(pid);
  }
  MLFX_ASSIGN(r.reason, json::get_string(*body, "reason", where));
  MLFX_ASSIGN(r.requester, json::get_string(*body, "requester", where));
  MLFX_ASSIGN(r.nonce, json::get_string(*body, "nonce", where));
  MLFX_ASSIGN(r.issued_utc, json::get_string(*body, "issued_utc", where));
  MLFX_ASSIGN(r.expires_utc, json::get_string(*body, "expires_utc", where));
  MLFX_TRY(validate(r));
  MLFX_ASSIGN(s.signer, json::get_string(j, "signer", where));
  if (!s.signer.starts_with("sha256:") || !lower_hex(std::string_view(s.signer).substr(7), 64))
    return fail(Errc::kBadFormat, where + ": signer must be a key fingerprint, sha256: and 64 lowercase hex digits");
  MLFX_ASSIGN(s.signature, json::get_base64(j, "signature", crypto::kSignatureSize, where));
  if (s.text().size() > kMaxSignedRequestSize)
    return fail(Errc::kBadFormat, where + " is over " + std::to_string(kMaxSignedRequestSize) + " bytes");
  return s;
}

Result<SignedCaptureRequest> parse_signed_request(std::string_view text) {
  // Bounded before the parser sees it: a request is small, whatever a peer sends.
  if (text.size() > kMaxSignedRequestSize)
    return fail(Errc::kBadFormat, "capture request of " + std::to_string(text.size()) + " bytes is over the limit of " +
                                      std::to_string(kMaxSignedRequestSize));
  MLFX_ASSIGN(json::Json j, json::parse(text, "capture request"));
  return signed_request_from_json(j);
}

Result<const crypto::VerifyKey*> check_request(const SignedCaptureRequest& s, const RequestPolicy& policy,
                                               int64_t now) {
  const CaptureRequest& r = s.request;
  auto key = std::find_if(policy.signers.begin(), policy.signers.end(),
                          [&](const crypto::VerifyKey& k) { return k.fingerprint() == s.signer; });
  if (key == policy.signers.end())
    return fail(Errc::kUntrusted, "signed by " + s.signer + ", which is not among this agent's lab request signers "
                                  "([lab_requests] signers)");
  if (!key->verify(signing_message(r), s.signature))
    return fail(Errc::kCorrupt, "the signature by " + s.signer + " does not verify: the request was altered or "
                                "not signed by that key");
  if (r.device != policy.device_id)
    return fail(Errc::kUntrusted, "the request is for device '" + r.device + "', and this is '" + policy.device_id + "'");
  MLFX_ASSIGN(int64_t issued, parse_utc_seconds(r.issued_utc));
  MLFX_ASSIGN(int64_t expires, parse_utc_seconds(r.expires_utc));
  const std::string clock = " (this device's clock: " + utc_seconds(now) + ")";
  if (issued > now + policy.max_skew.count())
    return fail(Errc::kInvalidArgument, "issued " + r.issued_utc + ", in the future by more than " +
                                            std::to_string(policy.max_skew.count()) + " s" + clock);
  if (expires <= now) return fail(Errc::kInvalidArgument, "expired at " + r.expires_utc + clock);
  if (now - issued > policy.max_age.count())
    return fail(Errc::kInvalidArgument, "issued " + r.issued_utc + ", more than " +
                                            std::to_string(policy.max_age.count()) +
                                            " s ago ([lab_requests] max_age)" + clock);
  return &*key;
}

}  // namespace mlfx::request
