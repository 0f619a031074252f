// The agent's verifier of capture requests from the lab (agent/upload/lab_requests.h,
// protocol/doc/capture-request.md): what it honours, what it refuses and why, the nonce store
// that refuses a replay even after a restart, and the REQUEST_POLL / REQUESTS messages.
#include <sys/stat.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "mlfx/crypto/keys.h"
#include "mlfx/request/capture_request.h"
#include "mlfx/wire/messages.h"
#include "test_util.h"
#include "upload/lab_requests.h"

namespace mlfx::agent {
namespace {

using testing::read_file;
using testing::TempDir;
using testing::write_file;

constexpr int64_t kNow = 1'800'000'000;  // 2027-01-15T08:00:00Z

class LabRequestVerifier : public ::testing::Test {
 protected:
  void SetUp() override {
    lab_ = *crypto::SigningKey::generate();
    other_ = *crypto::SigningKey::generate();
    policy_.signers = {lab_->public_key()};
    policy_.device_id = "car-17";
    policy_.max_age = std::chrono::seconds(300);
    reopen();
  }

  void reopen(int64_t now = kNow) {
    store_.reset();
    auto s = NonceStore::open(dir_.path(), now);
    ASSERT_TRUE(s) << s.error().to_string();
    store_.emplace(std::move(*s));
  }

  request::CaptureRequest request(const std::string& device = "car-17", int64_t issued = kNow,
                                  std::chrono::seconds ttl = std::chrono::seconds(300)) {
    auto r = request::make_capture_request(device, "resnet", 0, "incident 42: odd outputs", "alice@lab", issued, ttl);
    EXPECT_TRUE(r) << r.error().to_string();
    return *r;
  }
  std::string signed_text(const request::CaptureRequest& r, const crypto::SigningKey& key) {
    auto s = request::sign(r, key);
    EXPECT_TRUE(s) << s.error().to_string();
    return s->text();
  }
  std::string signed_text(const request::CaptureRequest& r) { return signed_text(r, *lab_); }

  Result<LabRequest> verify(std::string_view text, int64_t now = kNow) {
    return verify_lab_request(text, policy_, *store_, now);
  }
  // A refusal with this error code whose message says `why`.
  void expect_refused(const Result<LabRequest>& r, Errc code, const std::string& why) {
    ASSERT_FALSE(r) << "accepted: " << r->request_id;
    EXPECT_EQ(r.error().code(), code) << r.error().to_string();
    EXPECT_NE(r.error().to_string().find(why), std::string::npos) << r.error().to_string();
  }

  TempDir dir_;
  std::optional<crypto::SigningKey> lab_, other_;
  request::RequestPolicy policy_;
  std::optional<NonceStore> store_;
};

TEST_F(LabRequestVerifier, HonoursAGoodRequestWithItsSignerAndDocument) {
  const request::CaptureRequest r = request();
  const std::string text = signed_text(r);
  auto ok = verify(text);
  ASSERT_TRUE(ok) << ok.error().to_string();
  EXPECT_EQ(ok->request_id, r.request_id);
  EXPECT_EQ(ok->device, "car-17");
  EXPECT_EQ(ok->target, "resnet");
  EXPECT_EQ(ok->pid, 0);
  EXPECT_EQ(ok->reason, "incident 42: odd outputs");
  EXPECT_EQ(ok->requester, "alice@lab");
  EXPECT_EQ(ok->signer_fingerprint, lab_->public_key().fingerprint());
  EXPECT_EQ(ok->nonce, r.nonce);
  EXPECT_EQ(ok->issued_utc, "2027-01-15T08:00:00Z");
  EXPECT_EQ(ok->expires_utc, "2027-01-15T08:05:00Z");
  EXPECT_EQ(ok->signed_request, text) << "the lab's document as signed, for the custody log";
  EXPECT_EQ(store_->size(), 1u);
}

TEST_F(LabRequestVerifier, ARequestByPidAndALabKeysSigningHalfAreHonoured) {
  // A lab key file's Ed25519 half (its .pub lists the X25519 key first) signs requests too.
  ASSERT_TRUE(crypto::generate_key_files(crypto::KeyKind::kLab, dir_ / "lab"));
  auto lab_secret = crypto::load_secret_key_file(dir_ / "lab.key");
  auto lab_public = crypto::load_public_key_file(dir_ / "lab.pub");
  ASSERT_TRUE(lab_secret && lab_public);
  policy_.signers.push_back(*lab_public->verify);
  auto r = request::make_capture_request("car-17", "", 4242, "triage", "bob", kNow, std::chrono::seconds(60));
  ASSERT_TRUE(r);
  auto ok = verify(signed_text(*r, *lab_secret->signing));
  ASSERT_TRUE(ok) << ok.error().to_string();
  EXPECT_EQ(ok->pid, 4242);
  EXPECT_TRUE(ok->target.empty());
}

TEST_F(LabRequestVerifier, RefusesAReplay) {
  const std::string text = signed_text(request());
  ASSERT_TRUE(verify(text));
  expect_refused(verify(text, kNow + 1), Errc::kExists, "replayed");
}

TEST_F(LabRequestVerifier, RefusesAReplayAfterTheNonceStoreIsReopened) {
  const request::CaptureRequest r = request();
  const std::string text = signed_text(r);
  ASSERT_TRUE(verify(text));
  reopen(kNow + 10);  // the agent restarted
  EXPECT_EQ(store_->size(), 1u);
  EXPECT_NE(read_file(store_->path()).find(r.nonce), std::string::npos);
  expect_refused(verify(text, kNow + 10), Errc::kExists, "replayed: its nonce " + r.nonce);
}

TEST_F(LabRequestVerifier, RefusesAnAlteredRequest) {
  std::string text = signed_text(request());
  const size_t at = text.find("incident 42");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 11, "incident 43");
  expect_refused(verify(text), Errc::kCorrupt, "does not verify");
  // And a signature of the right length from the right signer's name, over something else.
  auto other = request::sign(request(), *lab_);
  auto mine = request::parse_signed_request(signed_text(request()));
  ASSERT_TRUE(other && mine);
  mine->signature = other->signature;
  expect_refused(verify(mine->text()), Errc::kCorrupt, "does not verify");
  EXPECT_EQ(store_->size(), 0u) << "no nonce of a refused request is kept";
}

TEST_F(LabRequestVerifier, RefusesAKeyThatIsNotASigner) {
  expect_refused(verify(signed_text(request(), *other_)), Errc::kUntrusted, "not among this agent's lab request signers");
  // Naming a configured signer does not help a signature by another key.
  auto s = request::sign(request(), *other_);
  ASSERT_TRUE(s);
  s->signer = lab_->public_key().fingerprint();
  expect_refused(verify(s->text()), Errc::kCorrupt, "does not verify");
}

TEST_F(LabRequestVerifier, RefusesARequestForAnotherDevice) {
  expect_refused(verify(signed_text(request("car-18"))), Errc::kUntrusted, "for device 'car-18'");
}

TEST_F(LabRequestVerifier, RefusesAnExpiredRequest) {
  const std::string text = signed_text(request("car-17", kNow, std::chrono::seconds(120)));
  expect_refused(verify(text, kNow + 120), Errc::kInvalidArgument, "expired at 2027-01-15T08:02:00Z");
}

TEST_F(LabRequestVerifier, RefusesARequestIssuedLongerAgoThanMaxAge) {
  // Valid for an hour by the lab's word, but this device honours requests up to 300 s old.
  const std::string text = signed_text(request("car-17", kNow, std::chrono::seconds(3600)));
  ASSERT_TRUE(verify(signed_text(request("car-17", kNow, std::chrono::seconds(3600))), kNow + 300));
  expect_refused(verify(text, kNow + 301), Errc::kInvalidArgument, "more than 300 s ago");
}

TEST_F(LabRequestVerifier, RefusesARequestFromTheFutureBeyondTheSkew) {
  const std::string text = signed_text(request("car-17", kNow + 61));
  expect_refused(verify(text), Errc::kInvalidArgument, "in the future by more than 60 s");
  // A refusal does not use up the nonce: once the clock has caught up it is honoured.
  EXPECT_TRUE(verify(text, kNow + 1));
  EXPECT_TRUE(verify(signed_text(request("car-17", kNow + 60))));
}

TEST_F(LabRequestVerifier, RefusesMalformedAndHostileDocuments) {
  const std::string good = signed_text(request());
  auto edit = [&](const std::function<void(json::Json&)>& change) {
    json::Json j = *json::parse(good, "test");
    change(j);
    return json::canonical(j);
  };
  auto set = [&](const char* key, json::Json value) {
    return edit([&](json::Json& j) { j["request"][key] = value; });
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not JSON", "{\"request\":"},
      {"an array", "[]"},
      {"a string", "\"capture\""},
      {"nested too deep", std::string(100, '[') + std::string(100, ']')},
      {"no signature", edit([](json::Json& j) { j.erase("signature"); })},
      {"unknown envelope field", edit([](json::Json& j) { j["note"] = "x"; })},
      {"unknown request field", set("command", "rm -rf /")},
      {"version 2", set("version", 2)},
      {"another kind", set("kind", "exec")},
      {"target and pid", set("pid", 4242)},
      {"neither target nor pid", edit([](json::Json& j) { j["request"].erase("target"); })},
      {"pid 0", edit([](json::Json& j) { j["request"].erase("target"); j["request"]["pid"] = 0; })},
      {"negative pid", edit([](json::Json& j) { j["request"].erase("target"); j["request"]["pid"] = -1; })},
      {"fractional pid", edit([](json::Json& j) { j["request"].erase("target"); j["request"]["pid"] = 1.5; })},
      {"pid above the kernel's", edit([](json::Json& j) { j["request"].erase("target"); j["request"]["pid"] = 1u << 23; })},
      {"pid as text", edit([](json::Json& j) { j["request"].erase("target"); j["request"]["pid"] = "4242"; })},
      {"numeric request id", set("request_id", 42)},
      {"uppercase request id", set("request_id", std::string(32, 'A'))},
      {"short nonce", set("nonce", "abcd")},
      {"device as a path", set("device", "../car-17")},
      {"device '..'", set("device", "..")},
      {"target with a slash", set("target", "a/b")},
      {"empty reason", set("reason", "")},
      {"reason with an escape sequence", set("reason", "ok\x1b[2J")},
      {"reason with a direction override", set("reason", "ok \u202e")},
      {"reason too long", set("reason", std::string(1025, 'r'))},
      {"requester too long", set("requester", std::string(129, 'r'))},
      {"date that does not exist", set("issued_utc", "2027-02-30T08:00:00Z")},
      {"time with a fraction", set("issued_utc", "2027-01-15T08:00:00.5Z")},
      {"time without a zone", set("issued_utc", "2027-01-15T08:00:00")},
      {"expiry before issue", set("expires_utc", "2027-01-15T07:59:59Z")},
      {"lifetime over a day", set("expires_utc", "2027-01-16T08:00:01Z")},
      {"short signature", edit([](json::Json& j) { j["signature"] = to_base64(Bytes(63, 1)); })},
      {"signature not base64", edit([](json::Json& j) { j["signature"] = "!!!!"; })},
      {"signer not a fingerprint", edit([](json::Json& j) { j["signer"] = "alice"; })},
      {"invalid UTF-8", [&] {
         std::string t = good;
         t.replace(t.find("incident"), 1, "\xff");
         return t;
       }()},
  };
  for (const auto& [what, text] : cases) {
    SCOPED_TRACE(what);
    auto r = verify(text);
    ASSERT_FALSE(r) << "accepted";
    EXPECT_EQ(r.error().code(), Errc::kBadFormat) << r.error().to_string();
  }
  EXPECT_EQ(store_->size(), 0u);
  EXPECT_TRUE(verify(good)) << "the document they were made from is good";
}

TEST_F(LabRequestVerifier, RefusesADocumentOverTheSizeBoundBeforeParsingIt) {
  const std::string good = signed_text(request());
  const std::string padded = good + std::string(request::kMaxSignedRequestSize - good.size() + 1, ' ');
  expect_refused(verify(padded), Errc::kBadFormat, "over the limit of 4096");
  // The longest request the rules allow fits well within it.
  auto r = request::make_capture_request("car-17", std::string(64, 't'), 0, std::string(1024, 'r'),
                                         std::string(128, 'q'), kNow, std::chrono::seconds(300));
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_TRUE(verify(signed_text(*r)));
}

TEST(LabRequestTimes, ParseExactlyOneFormOfARealTime) {
  EXPECT_EQ(*request::parse_utc_seconds("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(*request::parse_utc_seconds("2027-01-15T08:00:00Z"), kNow);
  EXPECT_EQ(request::utc_seconds(kNow), "2027-01-15T08:00:00Z");
  for (const char* bad : {"2027-1-15T08:00:00Z", "2027-01-15 08:00:00Z", "2027-13-01T00:00:00Z", "2027-01-15T24:00:00Z",
                          "2027-01-15T08:00:60Z", "2027-01-15T08:00:00+00:00", "", "2027-01-15T08:00:0xZ"})
    EXPECT_FALSE(request::parse_utc_seconds(bad)) << bad;
}

// ---- the nonce store ----

TEST(NonceStoreTest, ForgetsNoncesOfRequestsLongExpiredAndRewritesTheFile) {
  TempDir dir;
  const std::string a(32, 'a'), b(32, 'b'), id(32, 'c');
  {
    auto s = NonceStore::open(dir.path(), kNow);
    ASSERT_TRUE(s) << s.error().to_string();
    ASSERT_TRUE(s->record(a, id, kNow + 100, kNow));
    ASSERT_TRUE(s->record(b, id, kNow + 1000, kNow));
  }
  auto s = NonceStore::open(dir.path(), kNow + 100 + NonceStore::kForgetAfter.count() + 1);
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_FALSE(s->seen(a));
  EXPECT_TRUE(s->seen(b));
  const std::string text = read_file(s->path());
  EXPECT_EQ(text.find(a), std::string::npos);
  EXPECT_NE(text.find(b), std::string::npos);
  struct stat st;
  ASSERT_EQ(::stat(s->path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(NonceStoreTest, ATornLastLineIsIgnoredAndADamagedLineRefused) {
  TempDir dir;
  const std::string a(32, 'a'), id(32, 'c');
  {
    auto s = NonceStore::open(dir.path(), kNow);
    ASSERT_TRUE(s);
    ASSERT_TRUE(s->record(a, id, kNow + 100, kNow));
  }
  const std::string path = dir / "lab-request-nonces.jsonl";
  const std::string whole = read_file(path);
  write_file(path, whole + "{\"expires_utc\":\"2027-01-");  // a kill in the middle of an append
  {
    auto s = NonceStore::open(dir.path(), kNow);
    ASSERT_TRUE(s) << s.error().to_string();
    EXPECT_TRUE(s->seen(a));
    EXPECT_EQ(s->size(), 1u);
  }
  EXPECT_EQ(read_file(path), whole);
  write_file(path, "not json\n" + whole);
  auto damaged = NonceStore::open(dir.path(), kNow);
  ASSERT_FALSE(damaged);
  EXPECT_EQ(damaged.error().code(), Errc::kCorrupt);
  EXPECT_NE(damaged.error().to_string().find("line 1 of " + path + " is damaged"), std::string::npos)
      << damaged.error().to_string();
}

TEST(NonceStoreTest, OneAgentPerStateDirectoryAndOnlyItsOwn) {
  TempDir dir;
  {
    auto first = NonceStore::open(dir.path(), kNow);
    ASSERT_TRUE(first);
    auto second = NonceStore::open(dir.path(), kNow);
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code(), Errc::kExists);
  }
  EXPECT_TRUE(NonceStore::open(dir.path(), kNow)) << "free again once the first is closed";

  const std::string shared = dir / "shared";
  ASSERT_EQ(::mkdir(shared.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(shared.c_str(), 0770), 0);
  auto writable = NonceStore::open(shared, kNow);
  ASSERT_FALSE(writable);
  EXPECT_EQ(writable.error().code(), Errc::kPermission);
  EXPECT_NE(writable.error().to_string().find("writable by group or others"), std::string::npos);

  const std::string planted = dir / "planted";
  ASSERT_EQ(::mkdir(planted.c_str(), 0700), 0);
  ASSERT_EQ(::symlink("/tmp/elsewhere", (planted + "/lab-request-nonces.jsonl").c_str()), 0);
  EXPECT_FALSE(NonceStore::open(planted, kNow)) << "a link in place of the file is not followed";
}

// ---- the wire messages that carry requests ----

TEST(RequestMessages, PollAndRequestsAreStrictAndBounded) {
  using namespace wire;
  RequestPoll p{3, {{std::string(32, 'a'), true, ""}, {std::string(32, 'b'), false, "expired"}}};
  auto back = parse_request_poll(as_bytes(json::canonical(to_json(p))));
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(back->max, 3u);
  ASSERT_EQ(back->acks.size(), 2u);
  EXPECT_TRUE(back->acks[0].accepted);
  EXPECT_EQ(back->acks[1].reason, "expired");
  EXPECT_FALSE(parse_request_poll(as_bytes(R"({"max":9,"acks":[]})")));
  EXPECT_FALSE(parse_request_poll(as_bytes(R"({"max":1,"acks":[{"request_id":"ab","result":"accepted"}]})")));
  EXPECT_FALSE(parse_request_poll(as_bytes(
      R"({"max":1,"acks":[{"request_id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","result":"maybe"}]})")));
  json::Json many = {{"max", 0}, {"acks", json::Json::array()}};
  for (int i = 0; i < 9; ++i) many["acks"].push_back({{"request_id", std::string(32, 'a')}, {"result", "accepted"}});
  EXPECT_FALSE(parse_request_poll(as_bytes(json::canonical(many))));

  RequestBatch b{{json::Json{{"request", json::Json::object()}}}, true};
  auto batch = parse_requests(as_bytes(json::canonical(to_json(b))));
  ASSERT_TRUE(batch) << batch.error().to_string();
  EXPECT_TRUE(batch->more);
  EXPECT_EQ(batch->requests.size(), 1u);
  EXPECT_FALSE(parse_requests(as_bytes(R"({"requests":[]})"))) << "'more' is required";
  EXPECT_FALSE(parse_requests(as_bytes(R"({"requests":["text"],"more":false})")));
  json::Json big = {{"requests", {{{"pad", std::string(kMaxRequestItem, 'x')}}}}, {"more", false}};
  EXPECT_FALSE(parse_requests(as_bytes(json::canonical(big))));
  json::Json nine = {{"requests", json::Json::array()}, {"more", false}};
  for (int i = 0; i < 9; ++i) nine["requests"].push_back(json::Json::object());
  EXPECT_FALSE(parse_requests(as_bytes(json::canonical(nine))));

  Welcome w{1, "car-17", "sha256:aa", "sha256:bb", 1024, 2048, {kCaptureRequestsFeature}};
  auto welcome = parse_welcome(as_bytes(json::canonical(to_json(w))));
  ASSERT_TRUE(welcome);
  EXPECT_EQ(welcome->features, std::vector<std::string>{kCaptureRequestsFeature});
  w.features.clear();
  EXPECT_FALSE(to_json(w).contains("features")) << "an intake without requests says nothing new";
}

}  // namespace
}  // namespace mlfx::agent
