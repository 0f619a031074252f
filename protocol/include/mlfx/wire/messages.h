// The intake wire protocol's frames and messages (protocol/doc/wire-protocol.md §3-4, §7):
// pure encoding and strict decoding, no I/O. A frame header is checked against its limits
// before its body is read, so a peer can never make the reader allocate more than one frame.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/bytes.h"
#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::wire {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr char kProtocolName[] = "mlfx-intake";
inline constexpr char kAlpn[] = "mlfx/1";
inline constexpr size_t kFrameHeaderSize = 8;
inline constexpr uint32_t kMaxControlBody = 64u << 10;
inline constexpr size_t kRecordOffsetSize = 8;  // a RECORD body starts with the unit's offset

enum class FrameType : uint16_t {
  kHello = 1,
  kWelcome = 2,
  kOffer = 3,
  kStatus = 4,
  kRecord = 5,
  kReceipt = 6,
  kError = 7,
  kPing = 8,
  kPong = 9,
  kRequestPoll = 10,  // §12: capture requests from the lab
  kRequests = 11,
};
const char* frame_type_name(FrameType t);

// A whole frame: header and body.
Bytes encode_frame(FrameType type, ByteView body);
Bytes encode_json_frame(FrameType type, const json::Json& body);

// Error codes (wire-protocol.md §10).
enum class WireError {
  kUnsupportedVersion,
  kBadFrame,
  kFrameTooLarge,
  kBundleTooLarge,
  kWrongDevice,
  kBadBundle,
  kBadRecord,
  kTooManyPartials,
  kOverQuota,
  kStoreFailed,
  kIdleTimeout,
  kBusy,
  kInternal,
};
const char* wire_error_name(WireError e);
std::optional<WireError> wire_error_from_name(std::string_view name);
// Whether a client should try the same bundle again later (wire-protocol.md §11).
bool wire_error_is_retryable(WireError e);

struct Hello {
  std::vector<uint32_t> versions{kProtocolVersion};
  std::string agent;
};
struct Welcome {
  uint32_t version = kProtocolVersion;
  std::string device_id, key_fingerprint, intake_key_fingerprint;
  uint32_t max_record = 0;
  uint64_t max_bundle = 0;
  std::vector<std::string> features = {};  // what this intake offers beyond uploads (§12); absent: none
};
// WELCOME.features of an intake that hands capture requests to devices (§12).
inline constexpr char kCaptureRequestsFeature[] = "capture_requests";
struct Offer {
  std::string bundle_id;    // 32 hex digits
  uint64_t file_size = 0;
  std::string bundle_digest;  // 64 hex digits
  uint32_t chunk_size = 0;
};
struct ByteRange {
  uint64_t offset = 0, length = 0;
  bool operator==(const ByteRange&) const = default;
};
struct Receipt {
  std::string bundle_id, bundle_digest, device_key_fingerprint, stored_as, received_utc,
      custody_event_sha256, intake_key_fingerprint;
  uint64_t file_size = 0;
};
struct SignedReceipt {
  Receipt receipt;
  Bytes signature;  // Ed25519 over receipt_signing_message(receipt)
};
enum class UploadState { kNew, kPartial, kStored };
struct UploadStatus {
  UploadState state = UploadState::kNew;
  std::vector<ByteRange> have;  // ascending, disjoint, non-adjacent
  std::optional<SignedReceipt> receipt;
};
struct ErrorMessage {
  WireError code = WireError::kInternal;
  std::string message;
};

// Capture requests from the lab (§12). A REQUEST_POLL acknowledges the requests of the last
// REQUESTS and asks for up to `max` more; REQUESTS carries signed requests
// (protocol/doc/capture-request.md) as JSON objects, checked here for shape and size only.
inline constexpr uint32_t kMaxRequestsPerFrame = 8;
inline constexpr size_t kMaxRequestItem = 4096;  // canonical bytes of one signed request
inline constexpr size_t kMaxAckReason = 512;
struct RequestAck {
  std::string request_id;  // 32 hex digits
  bool accepted = false;   // the device verified it (signature, device, time, nonce)
  std::string reason;      // why it was refused; empty when accepted
};
struct RequestPoll {
  uint32_t max = kMaxRequestsPerFrame;  // 0: acknowledge only
  std::vector<RequestAck> acks;
};
struct RequestBatch {
  std::vector<json::Json> requests;  // each an object of at most kMaxRequestItem canonical bytes
  bool more = false;                 // more are pending for this device
};

struct FrameHeader {
  FrameType type;
  uint32_t body_length;
};

std::array<uint8_t, kFrameHeaderSize> encode_frame_header(FrameType type, uint32_t body_length);
// The ERROR to send for a bad header: bad_frame (unknown type, nonzero flags, a RECORD where
// max_record is 0, i.e. where the reader takes none) or frame_too_large (a body over
// kMaxControlBody for JSON frames, max_record for RECORD).
tl::expected<FrameHeader, ErrorMessage> decode_frame_header(ByteView header, uint32_t max_record);

struct Record {
  uint64_t offset = 0;
  ByteView unit;  // points into the frame body
};

json::Json to_json(const Hello& m);
json::Json to_json(const Welcome& m);
json::Json to_json(const Offer& m);
json::Json to_json(const UploadStatus& m);
json::Json to_json(const Receipt& m);
json::Json to_json(const SignedReceipt& m);
json::Json to_json(const ErrorMessage& m);
json::Json to_json(const RequestPoll& m);
json::Json to_json(const RequestBatch& m);

// Strict: every required member present with the right type and range; unknown members are
// ignored (§8). Each parses a frame body of its type.
Result<Hello> parse_hello(ByteView body);
Result<Welcome> parse_welcome(ByteView body);
Result<Offer> parse_offer(ByteView body);
Result<UploadStatus> parse_status(ByteView body);
Result<SignedReceipt> parse_receipt(ByteView body);
Result<ErrorMessage> parse_error(ByteView body);
Result<RequestPoll> parse_request_poll(ByteView body);
Result<RequestBatch> parse_requests(ByteView body);
Result<Record> parse_record(ByteView body);
Bytes encode_record_body(uint64_t offset, ByteView unit);

// "mlfx-intake-v1 receipt\n" || canonical(receipt): what the intake key signs.
Bytes receipt_signing_message(const Receipt& r);

// Merges ranges into the canonical form of UploadStatus::have (sorted, overlaps and neighbours
// joined, empty ones dropped).
std::vector<ByteRange> normalize_ranges(std::vector<ByteRange> ranges);

}  // namespace mlfx::wire
