#include "mlfx/wire/messages.h"

#include <algorithm>
#include <cstring>

namespace mlfx::wire {
namespace {

constexpr char kReceiptContext[] = "mlfx-intake-v1 receipt\n";
constexpr size_t kMaxVersions = 16;
constexpr size_t kMaxRanges = 1u << 16;  // a STATUS body stays far below kMaxControlBody anyway
constexpr size_t kMaxFeatures = 16, kMaxFeatureLength = 64;

struct TypeInfo {
  FrameType type;
  const char* name;
};
constexpr TypeInfo kTypes[] = {
    {FrameType::kHello, "HELLO"},   {FrameType::kWelcome, "WELCOME"}, {FrameType::kOffer, "OFFER"},
    {FrameType::kStatus, "STATUS"}, {FrameType::kRecord, "RECORD"},   {FrameType::kReceipt, "RECEIPT"},
    {FrameType::kError, "ERROR"},   {FrameType::kPing, "PING"},       {FrameType::kPong, "PONG"},
    {FrameType::kRequestPoll, "REQUEST_POLL"}, {FrameType::kRequests, "REQUESTS"},
};

struct ErrorInfo {
  WireError code;
  const char* name;
  bool retryable;
};
constexpr ErrorInfo kErrors[] = {
    {WireError::kUnsupportedVersion, "unsupported_version", false},
    {WireError::kBadFrame, "bad_frame", false},
    {WireError::kFrameTooLarge, "frame_too_large", false},
    {WireError::kBundleTooLarge, "bundle_too_large", false},
    {WireError::kWrongDevice, "wrong_device", false},
    {WireError::kBadBundle, "bad_bundle", false},
    {WireError::kBadRecord, "bad_record", true},  // a unit damaged on the way: send it again
    {WireError::kTooManyPartials, "too_many_partials", true},
    {WireError::kOverQuota, "over_quota", true},  // until uploads finish or expire, or the quota is raised
    {WireError::kStoreFailed, "store_failed", true},
    {WireError::kIdleTimeout, "idle_timeout", true},
    {WireError::kBusy, "busy", true},  // another connection holds this upload (e.g. a dead link not yet timed out)
    {WireError::kInternal, "internal", true},
};

constexpr std::pair<UploadState, const char*> kStates[] = {
    {UploadState::kNew, "new"}, {UploadState::kPartial, "partial"}, {UploadState::kStored, "stored"}};

Result<json::Json> parse_body(ByteView body, FrameType type) {
  const std::string what = std::string(frame_type_name(type)) + " message";
  MLFX_ASSIGN(json::Json j, json::parse(std::string_view(reinterpret_cast<const char*>(body.data()), body.size()), what));
  if (!j.is_object()) return fail(Errc::kBadFormat, what + " must be a JSON object");
  return j;
}

Result<uint32_t> get_u32(const json::Json& j, const char* key, const std::string& where) {
  MLFX_ASSIGN(uint64_t v, json::get_uint(j, key, where));
  if (v > UINT32_MAX) return fail(Errc::kBadFormat, where + ": field '" + key + "' is out of range");
  return static_cast<uint32_t>(v);
}

// A hex string of exactly `digits` lowercase hex digits, kept as text.
Result<std::string> get_hex_text(const json::Json& j, const char* key, size_t bytes, const std::string& where) {
  MLFX_ASSIGN(Bytes b, json::get_hex(j, key, bytes, where));
  return to_hex(b);
}

Result<SignedReceipt> receipt_from_json(const json::Json& j, const std::string& where) {
  MLFX_ASSIGN(const json::Json* r, json::get_object(j, "receipt", where));
  const std::string in = where + ".receipt";
  SignedReceipt s;
  MLFX_ASSIGN(s.receipt.bundle_id, get_hex_text(*r, "bundle_id", 16, in));
  MLFX_ASSIGN(s.receipt.bundle_digest, get_hex_text(*r, "bundle_digest", 32, in));
  MLFX_ASSIGN(s.receipt.file_size, json::get_uint(*r, "file_size", in));
  MLFX_ASSIGN(s.receipt.device_key_fingerprint, json::get_string(*r, "device_key_fingerprint", in));
  MLFX_ASSIGN(s.receipt.stored_as, json::get_string(*r, "stored_as", in));
  MLFX_ASSIGN(s.receipt.received_utc, json::get_string(*r, "received_utc", in));
  MLFX_ASSIGN(s.receipt.custody_event_sha256, get_hex_text(*r, "custody_event_sha256", 32, in));
  MLFX_ASSIGN(s.receipt.intake_key_fingerprint, json::get_string(*r, "intake_key_fingerprint", in));
  MLFX_ASSIGN(s.signature, json::get_base64(j, "signature", 64, where));
  return s;
}

}  // namespace

const char* frame_type_name(FrameType t) {
  for (const auto& i : kTypes)
    if (i.type == t) return i.name;
  return "unknown";
}

std::array<uint8_t, kFrameHeaderSize> encode_frame_header(FrameType type, uint32_t body_length) {
  std::array<uint8_t, kFrameHeaderSize> h{};
  store_le<uint32_t>(h.data(), body_length);
  store_le<uint16_t>(h.data() + 4, static_cast<uint16_t>(type));
  store_le<uint16_t>(h.data() + 6, 0);
  return h;
}

tl::expected<FrameHeader, ErrorMessage> decode_frame_header(ByteView header, uint32_t max_record) {
  auto bad = [](WireError code, std::string message) {
    return tl::unexpected<ErrorMessage>(ErrorMessage{code, std::move(message)});
  };
  if (header.size() != kFrameHeaderSize) return bad(WireError::kBadFrame, "frame header must be 8 bytes");
  const uint32_t length = load_le<uint32_t>(header.data());
  const uint16_t type = load_le<uint16_t>(header.data() + 4);
  const uint16_t flags = load_le<uint16_t>(header.data() + 6);
  const bool known = std::any_of(std::begin(kTypes), std::end(kTypes),
                                 [&](const TypeInfo& i) { return static_cast<uint16_t>(i.type) == type; });
  if (!known) return bad(WireError::kBadFrame, "unknown frame type " + std::to_string(type));
  if (flags != 0) return bad(WireError::kBadFrame, "frame flags must be 0 in protocol version 1");
  const FrameType t = static_cast<FrameType>(type);
  if (t == FrameType::kRecord && max_record == 0)
    return bad(WireError::kBadFrame, "RECORD before an accepted OFFER: only control frames are taken here");
  const uint32_t limit = t == FrameType::kRecord ? max_record : kMaxControlBody;
  if (length > limit)
    return bad(WireError::kFrameTooLarge, std::string(frame_type_name(t)) + " frame of " + std::to_string(length) +
                                              " bytes exceeds the limit of " + std::to_string(limit));
  return FrameHeader{t, length};
}

Bytes encode_frame(FrameType type, ByteView body) {
  auto h = encode_frame_header(type, static_cast<uint32_t>(body.size()));
  Bytes out(h.size() + body.size());
  std::memcpy(out.data(), h.data(), h.size());
  if (!body.empty()) std::memcpy(out.data() + h.size(), body.data(), body.size());
  return out;
}

Bytes encode_json_frame(FrameType type, const json::Json& body) {
  return encode_frame(type, as_bytes(json::canonical(body)));
}

const char* wire_error_name(WireError e) {
  for (const auto& i : kErrors)
    if (i.code == e) return i.name;
  return "internal";
}

std::optional<WireError> wire_error_from_name(std::string_view name) {
  for (const auto& i : kErrors)
    if (name == i.name) return i.code;
  return std::nullopt;
}

bool wire_error_is_retryable(WireError e) {
  for (const auto& i : kErrors)
    if (i.code == e) return i.retryable;
  return true;
}

json::Json to_json(const Hello& m) {
  return {{"protocol", kProtocolName}, {"versions", m.versions}, {"agent", m.agent}};
}

json::Json to_json(const Welcome& m) {
  json::Json j = {{"version", m.version}, {"device_id", m.device_id}, {"key_fingerprint", m.key_fingerprint},
                  {"max_record", m.max_record}, {"max_bundle", m.max_bundle},
                  {"intake_key_fingerprint", m.intake_key_fingerprint}};
  if (!m.features.empty()) j["features"] = m.features;
  return j;
}

json::Json to_json(const Offer& m) {
  return {{"bundle_id", m.bundle_id}, {"file_size", m.file_size}, {"bundle_digest", m.bundle_digest},
          {"chunk_size", m.chunk_size}};
}

json::Json to_json(const UploadStatus& m) {
  json::Json have = json::Json::array();
  for (const auto& r : m.have) have.push_back({r.offset, r.length});
  json::Json j = {{"state", kStates[static_cast<int>(m.state)].second}, {"have", have}};
  if (m.receipt) j["receipt"] = to_json(*m.receipt);
  return j;
}

json::Json to_json(const Receipt& m) {
  return {{"bundle_id", m.bundle_id},
          {"bundle_digest", m.bundle_digest},
          {"file_size", m.file_size},
          {"device_key_fingerprint", m.device_key_fingerprint},
          {"stored_as", m.stored_as},
          {"received_utc", m.received_utc},
          {"custody_event_sha256", m.custody_event_sha256},
          {"intake_key_fingerprint", m.intake_key_fingerprint}};
}

json::Json to_json(const SignedReceipt& m) {
  return {{"receipt", to_json(m.receipt)}, {"signature", to_base64(m.signature)}};
}

json::Json to_json(const ErrorMessage& m) { return {{"code", wire_error_name(m.code)}, {"message", m.message}}; }

json::Json to_json(const RequestPoll& m) {
  json::Json acks = json::Json::array();
  for (const RequestAck& a : m.acks) {
    json::Json ack = {{"request_id", a.request_id}, {"result", a.accepted ? "accepted" : "refused"}};
    if (!a.accepted) ack["reason"] = a.reason;
    acks.push_back(std::move(ack));
  }
  return {{"max", m.max}, {"acks", std::move(acks)}};
}

json::Json to_json(const RequestBatch& m) {
  return {{"requests", m.requests}, {"more", m.more}};
}

Result<Hello> parse_hello(ByteView body) {
  const std::string where = "HELLO";
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kHello));
  MLFX_ASSIGN(std::string protocol, json::get_string(j, "protocol", where));
  if (protocol != kProtocolName)
    return fail(Errc::kBadFormat, "HELLO names protocol '" + protocol + "', not " + kProtocolName);
  MLFX_ASSIGN(const json::Json* versions, json::get_array(j, "versions", where));
  if (versions->empty() || versions->size() > kMaxVersions)
    return fail(Errc::kBadFormat, "HELLO must list 1 to " + std::to_string(kMaxVersions) + " versions");
  Hello h;
  h.versions.clear();
  for (const auto& v : *versions) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() > UINT32_MAX)
      return fail(Errc::kBadFormat, "HELLO versions must be non-negative integers");
    h.versions.push_back(v.get<uint32_t>());
  }
  MLFX_ASSIGN(h.agent, json::get_string(j, "agent", where));
  return h;
}

Result<Welcome> parse_welcome(ByteView body) {
  const std::string where = "WELCOME";
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kWelcome));
  Welcome w;
  MLFX_ASSIGN(w.version, get_u32(j, "version", where));
  MLFX_ASSIGN(w.device_id, json::get_string(j, "device_id", where));
  MLFX_ASSIGN(w.key_fingerprint, json::get_string(j, "key_fingerprint", where));
  MLFX_ASSIGN(w.max_record, get_u32(j, "max_record", where));
  MLFX_ASSIGN(w.max_bundle, json::get_uint(j, "max_bundle", where));
  MLFX_ASSIGN(w.intake_key_fingerprint, json::get_string(j, "intake_key_fingerprint", where));
  if (j.contains("features")) {  // newer than the first intakes: absent means none
    MLFX_ASSIGN(const json::Json* features, json::get_array(j, "features", where));
    if (features->size() > kMaxFeatures)
      return fail(Errc::kBadFormat, "WELCOME lists more than " + std::to_string(kMaxFeatures) + " features");
    for (const auto& f : *features) {
      if (!f.is_string() || f.get_ref<const std::string&>().empty() ||
          f.get_ref<const std::string&>().size() > kMaxFeatureLength)
        return fail(Errc::kBadFormat, "WELCOME features must be names of 1 to " + std::to_string(kMaxFeatureLength) +
                                          " characters");
      w.features.push_back(f.get<std::string>());
    }
  }
  return w;
}

Result<Offer> parse_offer(ByteView body) {
  const std::string where = "OFFER";
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kOffer));
  Offer o;
  MLFX_ASSIGN(o.bundle_id, get_hex_text(j, "bundle_id", 16, where));
  MLFX_ASSIGN(o.file_size, json::get_uint(j, "file_size", where));
  MLFX_ASSIGN(o.bundle_digest, get_hex_text(j, "bundle_digest", 32, where));
  MLFX_ASSIGN(o.chunk_size, get_u32(j, "chunk_size", where));
  return o;
}

Result<UploadStatus> parse_status(ByteView body) {
  const std::string where = "STATUS";
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kStatus));
  UploadStatus s;
  MLFX_ASSIGN(std::string state, json::get_string(j, "state", where));
  auto it = std::find_if(std::begin(kStates), std::end(kStates), [&](const auto& p) { return state == p.second; });
  if (it == std::end(kStates)) return fail(Errc::kBadFormat, "STATUS has an unknown state '" + state + "'");
  s.state = it->first;
  MLFX_ASSIGN(const json::Json* have, json::get_array(j, "have", where));
  if (have->size() > kMaxRanges) return fail(Errc::kBadFormat, "STATUS lists too many ranges");
  uint64_t end = 0;
  for (const auto& r : *have) {
    if (!r.is_array() || r.size() != 2 || !r[0].is_number_unsigned() || !r[1].is_number_unsigned())
      return fail(Errc::kBadFormat, "STATUS ranges must be [offset, length] pairs of non-negative integers");
    ByteRange b{r[0].get<uint64_t>(), r[1].get<uint64_t>()};
    // Canonical form only: a peer that sends overlaps or unsorted ranges is broken.
    if (b.length == 0 || b.offset + b.length < b.offset || (!s.have.empty() && b.offset <= end))
      return fail(Errc::kBadFormat, "STATUS ranges must be non-empty, ascending, disjoint and not adjacent");
    end = b.offset + b.length;
    s.have.push_back(b);
  }
  if (j.contains("receipt")) {
    MLFX_ASSIGN(s.receipt, receipt_from_json(j["receipt"], where + ".receipt"));
  }
  if ((s.state == UploadState::kStored) != s.receipt.has_value())
    return fail(Errc::kBadFormat, "STATUS carries a receipt exactly when the state is 'stored'");
  return s;
}

Result<SignedReceipt> parse_receipt(ByteView body) {
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kReceipt));
  return receipt_from_json(j, "RECEIPT");
}

Result<ErrorMessage> parse_error(ByteView body) {
  const std::string where = "ERROR";
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kError));
  MLFX_ASSIGN(std::string code, json::get_string(j, "code", where));
  ErrorMessage e;
  // An unknown code from a newer peer still ends the session; treat it as internal.
  e.code = wire_error_from_name(code).value_or(WireError::kInternal);
  MLFX_ASSIGN(e.message, json::get_string(j, "message", where));
  return e;
}

Result<RequestPoll> parse_request_poll(ByteView body) {
  const std::string where = "REQUEST_POLL";
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kRequestPoll));
  RequestPoll p;
  MLFX_ASSIGN(p.max, get_u32(j, "max", where));
  if (p.max > kMaxRequestsPerFrame)
    return fail(Errc::kBadFormat, "REQUEST_POLL asks for more than " + std::to_string(kMaxRequestsPerFrame) + " requests");
  MLFX_ASSIGN(const json::Json* acks, json::get_array(j, "acks", where));
  if (acks->size() > kMaxRequestsPerFrame)
    return fail(Errc::kBadFormat, "REQUEST_POLL acknowledges more than " + std::to_string(kMaxRequestsPerFrame) +
                                      " requests");
  for (const auto& a : *acks) {
    const std::string in = where + ".acks[]";
    RequestAck ack;
    MLFX_ASSIGN(ack.request_id, get_hex_text(a, "request_id", 16, in));
    MLFX_ASSIGN(std::string result, json::get_string(a, "result", in));
    if (result != "accepted" && result != "refused")
      return fail(Errc::kBadFormat, in + ": result must be 'accepted' or 'refused'");
    ack.accepted = result == "accepted";
    if (!ack.accepted) {
      MLFX_ASSIGN(ack.reason, json::get_string(a, "reason", in));
      if (ack.reason.size() > kMaxAckReason)
        return fail(Errc::kBadFormat, in + ": reason over " + std::to_string(kMaxAckReason) + " bytes");
    }
    p.acks.push_back(std::move(ack));
  }
  return p;
}

Result<RequestBatch> parse_requests(ByteView body) {
  const std::string where = "REQUESTS";
  MLFX_ASSIGN(json::Json j, parse_body(body, FrameType::kRequests));
  RequestBatch b;
  MLFX_ASSIGN(const json::Json* requests, json::get_array(j, "requests", where));
  if (requests->size() > kMaxRequestsPerFrame)
    return fail(Errc::kBadFormat, "REQUESTS carries more than " + std::to_string(kMaxRequestsPerFrame) + " requests");
  for (const auto& r : *requests) {
    if (!r.is_object()) return fail(Errc::kBadFormat, "REQUESTS: each request must be a JSON object");
    if (json::canonical(r).size() > kMaxRequestItem)
      return fail(Errc::kBadFormat, "REQUESTS: a request is over " + std::to_string(kMaxRequestItem) + " bytes");
    b.requests.push_back(r);
  }
  if (!j.contains("more") || !j["more"].is_boolean())
    return fail(Errc::kBadFormat, "REQUESTS: field 'more' must be true or false");
  b.more = j["more"].get<bool>();
  return b;
}

Result<Record> parse_record(ByteView body) {
  if (body.size() <= kRecordOffsetSize)
    return fail(Errc::kBadFormat, "RECORD frame must hold an 8-byte offset and at least one byte");
  return Record{load_le<uint64_t>(body.data()), body.subspan(kRecordOffsetSize)};
}

Bytes encode_record_body(uint64_t offset, ByteView unit) {
  Bytes out(kRecordOffsetSize + unit.size());
  store_le<uint64_t>(out.data(), offset);
  if (!unit.empty()) std::memcpy(out.data() + kRecordOffsetSize, unit.data(), unit.size());
  return out;
}

Bytes receipt_signing_message(const Receipt& r) {
  const std::string text = std::string(kReceiptContext) + json::canonical(to_json(r));
  return Bytes(text.begin(), text.end());
}

std::vector<ByteRange> normalize_ranges(std::vector<ByteRange> ranges) {
  std::erase_if(ranges, [](const ByteRange& r) { return r.length == 0; });
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  std::vector<ByteRange> out;
  for (const auto& r : ranges) {
    if (!out.empty() && r.offset <= out.back().offset + out.back().length) {
      out.back().length = std::max(out.back().offset + out.back().length, r.offset + r.length) - out.back().offset;
    } else {
      out.push_back(r);
    }
  }
  return out;
}

}  // namespace mlfx::wire
