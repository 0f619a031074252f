// Fuzzes the intake wire protocol's decoders (protocol/doc/wire-protocol.md) on untrusted
// frames: the input is one frame, header then body, as a peer would send it.
//
// Invariants: a header that decodes never allows a body over its limit; whatever a message
// parser accepts encodes into a body that parses again to the same encoding (canonical form);
// normalized ranges are canonical and normalizing again changes nothing.
#include <cstdint>
#include <string>

#include "fuzz_support.h"
#include "mlfx/wire/messages.h"

namespace {

using namespace mlfx;

constexpr uint32_t kMaxRecord = (4u << 20) + 56;

template <class Parse>
void round_trip(const char* what, ByteView body, Parse parse) {
  auto m = parse(body);
  if (!m) return;
  const std::string once = json::canonical(wire::to_json(*m));
  auto again = parse(as_bytes(once));
  if (!again) fuzz::invariant_failed("a re-encoded message parses again", std::string(what) + ": " + again.error().to_string() + "\n  " + once);
  if (json::canonical(wire::to_json(*again)) != once) fuzz::invariant_failed("the encoding is stable", std::string(what) + ": " + once);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ByteView in(data, size);
  if (size < wire::kFrameHeaderSize) return 0;
  auto h = wire::decode_frame_header(in.first(wire::kFrameHeaderSize), kMaxRecord);
  if (!h) return 0;
  const uint32_t limit = h->type == wire::FrameType::kRecord ? kMaxRecord : wire::kMaxControlBody;
  if (h->body_length > limit) fuzz::invariant_failed("decoded lengths are within the limit", std::to_string(h->body_length));
  const ByteView body = in.subspan(wire::kFrameHeaderSize);
  switch (h->type) {
    case wire::FrameType::kHello: round_trip("HELLO", body, wire::parse_hello); break;
    case wire::FrameType::kWelcome: round_trip("WELCOME", body, wire::parse_welcome); break;
    case wire::FrameType::kOffer: round_trip("OFFER", body, wire::parse_offer); break;
    case wire::FrameType::kReceipt: round_trip("RECEIPT", body, wire::parse_receipt); break;
    case wire::FrameType::kError: round_trip("ERROR", body, wire::parse_error); break;
    case wire::FrameType::kRequestPoll: round_trip("REQUEST_POLL", body, wire::parse_request_poll); break;
    case wire::FrameType::kRequests: round_trip("REQUESTS", body, wire::parse_requests); break;
    case wire::FrameType::kStatus: {
      round_trip("STATUS", body, wire::parse_status);
      if (auto s = wire::parse_status(body)) {
        if (wire::normalize_ranges(s->have) != s->have)
          fuzz::invariant_failed("accepted STATUS ranges are canonical", json::canonical(wire::to_json(*s)));
      }
      break;
    }
    case wire::FrameType::kRecord: {
      if (auto r = wire::parse_record(body)) {
        if (wire::encode_record_body(r->offset, r->unit) != Bytes(body.begin(), body.end()))
          fuzz::invariant_failed("a RECORD body re-encodes to itself", std::to_string(r->offset));
      }
      break;
    }
    default:
      break;
  }
  return 0;
}
