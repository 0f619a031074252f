#include "mlfx/custody/custody_log.h"

#include "mlfx/base/clock.h"
#include "mlfx/base/version.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::custody {

using json::Json;

namespace {
constexpr std::string_view kGenesisContext = "mlfx-custody-v1 genesis\n";
constexpr std::string_view kEventContext = "mlfx-custody-v1 event\n";
constexpr size_t kMaxEvents = 100000;

Bytes signing_message(const Json& event) {
  Json unsigned_event = event;
  unsigned_event.erase("signature");
  std::string body = json::canonical(unsigned_event);
  Bytes msg(kEventContext.begin(), kEventContext.end());
  msg.insert(msg.end(), body.begin(), body.end());
  return msg;
}
}  // namespace

bool is_known_event_type(std::string_view type) {
  for (const char* t : kEventTypes)
    if (type == t) return true;
  return false;
}

std::string genesis_hash(const std::string& bundle_id_hex) {
  std::string msg(kGenesisContext);
  msg += bundle_id_hex;
  return crypto::sha256_hex(as_bytes(msg));
}

std::string event_hash(const Json& event) {
  return crypto::sha256_hex(as_bytes(json::canonical(event)));
}

Result<CustodyLog> CustodyLog::parse(std::string_view text, const std::string& bundle_id_hex) {
  CustodyLog log(bundle_id_hex);
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos)
      return fail(Errc::kBadFormat, "custody log: line " + std::to_string(line_no + 1) +
                                        " is not terminated (log truncated?)");
    ++line_no;
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (log.events_.size() >= kMaxEvents)
      return fail(Errc::kBadFormat, "custody log: more than " + std::to_string(kMaxEvents) + " events");
    auto ev = json::parse(line, "custody log line " + std::to_string(line_no));
    if (!ev) return fail(std::move(ev).error());
    if (!ev->is_object())
      return fail(Errc::kBadFormat, "custody log line " + std::to_string(line_no) + " is not an object");
    // Only the canonical encoding is accepted, so that the bytes on disk are exactly what the
    // chain hashes and signatures cover (no re-encodings, no duplicate keys).
    if (json::canonical(*ev) != line)
      return fail(Errc::kCorrupt, "custody log line " + std::to_string(line_no) +
                                      " is not in canonical form (re-encoded or edited)");
    log.events_.push_back(std::move(*ev));
  }
  return log;
}

Status CustodyLog::append(std::string_view type, const Actor& actor,
                          const crypto::SigningKey& key, Json parameters, Json details) {
  if (!is_known_event_type(type))
    return fail(Errc::kInvalidArgument, "unknown custody event type '" + std::string(type) + "'");
  Json ev = {
      {"seq", events_.size()},
      {"type", type},
      {"bundle_id", bundle_id_},
      {"utc", utc_timestamp()},
      {"actor",
       {{"role", actor.role},
        {"id", actor.id},
        {"host", actor.host},
        {"user", actor.user},
        {"key_fingerprint", key.public_key().fingerprint()},
        {"public_key", to_base64(key.public_key().raw())}}},
      {"tool", {{"name", kToolName}, {"version", kToolVersion}}},
      {"parameters", std::move(parameters)},
      {"details", std::move(details)},
      {"prev", events_.empty() ? genesis_hash(bundle_id_) : event_hash(events_.back())},
  };
  MLFX_ASSIGN(Bytes sig, key.sign(signing_message(ev)));
  ev["signature"] = to_base64(sig);
  events_.push_back(std::move(ev));
  return {};
}

Result<ChainReport> CustodyLog::verify() const {
  ChainReport report;
  std::string expected_prev = genesis_hash(bundle_id_);
  for (size_t i = 0; i < events_.size(); ++i) {
    const Json& ev = events_[i];
    const std::string w = "custody event " + std::to_string(i);
    MLFX_ASSIGN(uint64_t seq, json::get_uint(ev, "seq", w));
    MLFX_ASSIGN(std::string type, json::get_string(ev, "type", w));
    MLFX_ASSIGN(std::string bundle, json::get_string(ev, "bundle_id", w));
    MLFX_ASSIGN(std::string prev, json::get_string(ev, "prev", w));
    MLFX_ASSIGN(const Json* actor, json::get_object(ev, "actor", w));
    MLFX_ASSIGN(Bytes pub, json::get_base64(*actor, "public_key", crypto::kRawKeySize, w + " actor"));
    MLFX_ASSIGN(Bytes sig, json::get_base64(ev, "signature", crypto::kSignatureSize, w));
    const std::string wt = w + " (" + type + ")";
    if (seq != i) return fail(Errc::kCorrupt, wt + ": sequence number is " + std::to_string(seq) + ", expected " + std::to_string(i) + " (event removed or reordered)");
    if (bundle != bundle_id_) return fail(Errc::kCorrupt, wt + ": belongs to bundle " + bundle);
    if (!is_known_event_type(type)) return fail(Errc::kBadFormat, wt + ": unknown event type");
    if (prev != expected_prev)
      return fail(Errc::kCorrupt, wt + ": hash chain broken (previous event removed, reordered or edited)");
    MLFX_ASSIGN(crypto::VerifyKey key, crypto::VerifyKey::from_raw(pub));
    if (!key.verify(signing_message(ev), sig))
      return fail(Errc::kCorrupt, wt + ": signature does not verify (event edited)");
    MLFX_ASSIGN(std::string fp, json::get_string(*actor, "key_fingerprint", w + " actor"));
    if (fp != key.fingerprint())
      return fail(Errc::kCorrupt, wt + ": actor key fingerprint does not match its public key");
    expected_prev = event_hash(ev);
    report.types.push_back(type);
    report.fingerprints.push_back(key.fingerprint());
  }
  report.events = events_.size();
  return report;
}

std::string CustodyLog::serialize() const {
  std::string out;
  for (const auto& ev : events_) out += json::canonical(ev) + "\n";
  return out;
}

}  // namespace mlfx::custody
