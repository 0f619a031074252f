// The intake wire protocol's codec (protocol/doc/wire-protocol.md §3-4, §7, §10).
#include <gtest/gtest.h>

#include "mlfx/crypto/keys.h"
#include "mlfx/wire/messages.h"

namespace mlfx::wire {
namespace {

ByteView body_of(const Bytes& frame) { return ByteView(frame).subspan(kFrameHeaderSize); }

TEST(WireFrame, HeaderRoundTripAndLimitsCheckedBeforeTheBody) {
  auto h = encode_frame_header(FrameType::kOffer, 1234);
  auto d = decode_frame_header(h, 1 << 20);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->type, FrameType::kOffer);
  EXPECT_EQ(d->body_length, 1234u);

  // RECORD frames up to max_record; control frames up to 64 KiB.
  EXPECT_TRUE(decode_frame_header(encode_frame_header(FrameType::kRecord, 4u << 20), 4u << 20));
  auto big = decode_frame_header(encode_frame_header(FrameType::kRecord, (4u << 20) + 1), 4u << 20);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, WireError::kFrameTooLarge);
  auto big_json = decode_frame_header(encode_frame_header(FrameType::kHello, kMaxControlBody + 1), 64u << 20);
  ASSERT_FALSE(big_json);
  EXPECT_EQ(big_json.error().code, WireError::kFrameTooLarge);
  EXPECT_NE(big_json.error().message.find("HELLO frame of 65537 bytes"), std::string::npos);

  auto unknown = encode_frame_header(FrameType::kHello, 0);
  unknown[4] = 77;
  EXPECT_EQ(decode_frame_header(unknown, 1 << 20).error().code, WireError::kBadFrame);
  auto flagged = encode_frame_header(FrameType::kHello, 0);
  flagged[6] = 1;
  EXPECT_EQ(decode_frame_header(flagged, 1 << 20).error().code, WireError::kBadFrame);
  EXPECT_EQ(decode_frame_header(ByteView(h).first(7), 1 << 20).error().code, WireError::kBadFrame);
}

TEST(WireFrame, LittleEndianLayout) {
  Bytes f = encode_frame(FrameType::kPing, as_bytes("{}"));
  ASSERT_EQ(f.size(), 10u);
  EXPECT_EQ(to_hex(ByteView(f).first(8)), "0200000008000000");
}

TEST(WireMessages, RoundTrips) {
  Hello h;
  h.agent = "mlfx-agent 0.3.0";
  auto h2 = parse_hello(body_of(encode_json_frame(FrameType::kHello, to_json(h))));
  ASSERT_TRUE(h2) << h2.error().to_string();
  EXPECT_EQ(h2->versions, std::vector<uint32_t>{1});
  EXPECT_EQ(h2->agent, h.agent);

  Welcome w{1, "car-17", "sha256:aa", "sha256:bb", (4u << 20) + 56, 1ull << 40};
  auto w2 = parse_welcome(as_bytes(json::canonical(to_json(w))));
  ASSERT_TRUE(w2) << w2.error().to_string();
  EXPECT_EQ(w2->device_id, "car-17");
  EXPECT_EQ(w2->max_record, (4u << 20) + 56);
  EXPECT_EQ(w2->max_bundle, 1ull << 40);

  Offer o{std::string(32, 'a'), 917987328, std::string(64, 'b'), 4u << 20};
  auto o2 = parse_offer(as_bytes(json::canonical(to_json(o))));
  ASSERT_TRUE(o2) << o2.error().to_string();
  EXPECT_EQ(o2->file_size, 917987328u);
  EXPECT_EQ(o2->bundle_digest, o.bundle_digest);

  UploadStatus s;
  s.state = UploadState::kPartial;
  s.have = {{0, 64}, {100, 50}};
  auto s2 = parse_status(as_bytes(json::canonical(to_json(s))));
  ASSERT_TRUE(s2) << s2.error().to_string();
  EXPECT_EQ(s2->state, UploadState::kPartial);
  EXPECT_EQ(s2->have, s.have);
  EXPECT_FALSE(s2->receipt);

  const Bytes record_body = encode_record_body(0x1122334455667788ull, as_bytes("unit"));
  auto rec = parse_record(record_body);  // points into record_body
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->offset, 0x1122334455667788ull);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(rec->unit.data()), rec->unit.size()), "unit");
  EXPECT_FALSE(parse_record(encode_record_body(5, {})));

  auto e = parse_error(as_bytes(json::canonical(to_json(ErrorMessage{WireError::kWrongDevice, "not yours"}))));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, WireError::kWrongDevice);
  EXPECT_FALSE(wire_error_is_retryable(e->code));
  auto newer = parse_error(as_bytes(R"({"code":"from_the_future","message":"x"})"));
  ASSERT_TRUE(newer);
  EXPECT_EQ(newer->code, WireError::kInternal);
}

// The receipt is signed over a context line plus its canonical JSON; a changed field breaks it.
TEST(WireMessages, SignedReceipt) {
  auto key = crypto::SigningKey::generate();
  ASSERT_TRUE(key);
  Receipt r{std::string(32, '1'), std::string(64, '2'), "sha256:dev", "objects/22.mlfx", "2026-11-22T02:00:00Z",
            std::string(64, '3'), key->public_key().fingerprint(), 1234};
  SignedReceipt sr{r, *key->sign(receipt_signing_message(r))};
  const std::string msg(reinterpret_cast<const char*>(receipt_signing_message(r).data()),
                        receipt_signing_message(r).size());
  EXPECT_EQ(msg.rfind("mlfx-intake-v1 receipt\n{", 0), 0u);

  UploadStatus stored{UploadState::kStored, {{0, 1234}}, sr};
  auto back = parse_status(as_bytes(json::canonical(to_json(stored))));
  ASSERT_TRUE(back) << back.error().to_string();
  ASSERT_TRUE(back->receipt);
  EXPECT_TRUE(key->public_key().verify(receipt_signing_message(back->receipt->receipt), back->receipt->signature));
  back->receipt->receipt.file_size += 1;
  EXPECT_FALSE(key->public_key().verify(receipt_signing_message(back->receipt->receipt), back->receipt->signature));

  auto alone = parse_receipt(as_bytes(json::canonical(to_json(sr))));
  ASSERT_TRUE(alone) << alone.error().to_string();
  EXPECT_EQ(alone->receipt.stored_as, "objects/22.mlfx");
}

TEST(WireMessages, StrictParsing) {
  EXPECT_FALSE(parse_hello(as_bytes(R"({"protocol":"other","versions":[1],"agent":"a"})")));
  EXPECT_FALSE(parse_hello(as_bytes(R"({"protocol":"mlfx-intake","versions":[],"agent":"a"})")));
  EXPECT_FALSE(parse_hello(as_bytes(R"({"protocol":"mlfx-intake","versions":[-1],"agent":"a"})")));
  EXPECT_FALSE(parse_hello(as_bytes(R"([1,2])")));
  EXPECT_FALSE(parse_hello(as_bytes("not json")));
  EXPECT_TRUE(parse_hello(as_bytes(R"({"protocol":"mlfx-intake","versions":[1,2],"agent":"a","new":true})")));
  EXPECT_FALSE(parse_offer(as_bytes(R"({"bundle_id":"xyz","file_size":1,"bundle_digest":"00","chunk_size":1})")));
  EXPECT_FALSE(parse_welcome(as_bytes(
      R"({"version":1,"device_id":"d","key_fingerprint":"k","max_record":4294967296,"max_bundle":1,"intake_key_fingerprint":"i"})")));
  // STATUS ranges must be canonical, and a receipt comes exactly with "stored".
  EXPECT_FALSE(parse_status(as_bytes(R"({"state":"partial","have":[[10,5],[0,5]]})")));
  EXPECT_FALSE(parse_status(as_bytes(R"({"state":"partial","have":[[0,5],[5,5]]})")));
  EXPECT_FALSE(parse_status(as_bytes(R"({"state":"partial","have":[[0,0]]})")));
  EXPECT_FALSE(parse_status(as_bytes(R"({"state":"partial","have":[[18446744073709551615,2]]})")));
  EXPECT_FALSE(parse_status(as_bytes(R"({"state":"stored","have":[]})")));
  EXPECT_FALSE(parse_status(as_bytes(R"({"state":"done","have":[]})")));
}

TEST(WireRanges, Normalize) {
  auto n = normalize_ranges({{50, 10}, {0, 10}, {10, 5}, {55, 20}, {30, 0}, {100, 1}});
  EXPECT_EQ(n, (std::vector<ByteRange>{{0, 15}, {50, 25}, {100, 1}}));
  EXPECT_TRUE(normalize_ranges({}).empty());
}

}  // namespace
}  // namespace mlfx::wire
