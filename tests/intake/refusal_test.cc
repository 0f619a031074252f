// What the intake refuses, over real TLS on loopback against a real `mlfx serve`: devices
// whose certificates must not pass (expired, revoked while the server runs, another CA's, none
// at all, no TLS at all), and connections that break the protocol (bad headers, oversize
// frames, bad JSON, messages out of order, absurd offers, records off their units or off their
// signed hashes, silence). Each bad connection gets its ERROR and is closed on its own; good
// devices keep uploading, including one upload that runs the whole time.
#include "intake/raw_client.h"  // first: it includes <utility> before any asio header

#include <arpa/inet.h>
#include <atomic>
#include <openssl/pem.h>
#include <openssl/x509.h>

namespace mlfx::testing {
namespace {

using nlohmann::json;
using wire::FrameType;
using namespace std::chrono_literals;

#define EXPECT_CONTAINS(hay, needle) \
  EXPECT_NE(std::string(hay).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" << (hay)

// A plain TCP connection, no TLS: sends `bytes` and returns how the server ended it
// ("closed", "reset", or "timeout" when it is still open after `timeout`).
std::string plaintext_exchange(int port, const std::string& bytes, std::chrono::seconds timeout = 5s) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return "connect failed";
  }
  timeval tv{static_cast<time_t>(timeout.count()), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string got, result;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      got.append(buf, size_t(n));
      continue;
    }
    result = n == 0 ? "closed" : errno == EAGAIN || errno == EWOULDBLOCK ? "timeout" : "reset";
    break;
  }
  close(fd);
  EXPECT_EQ(got.find("HTTP/"), std::string::npos) << got;
  EXPECT_EQ(got.find("WELCOME"), std::string::npos);
  return result;
}

// A copy of `cert` (signed by the CA in `ca_dir`) whose validity ended yesterday, re-signed by
// the same CA: everything about it is right except the dates.
void write_expired_copy(const std::string& cert, const std::string& ca_dir, const std::string& out) {
  FILE* f = fopen(cert.c_str(), "r");
  ASSERT_TRUE(f);
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  fclose(f);
  ASSERT_TRUE(x);
  f = fopen((ca_dir + "/ca.key").c_str(), "r");
  ASSERT_TRUE(f);
  EVP_PKEY* key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
  fclose(f);
  ASSERT_TRUE(key);
  ASSERT_TRUE(X509_gmtime_adj(X509_getm_notBefore(x), -3 * 86400));
  ASSERT_TRUE(X509_gmtime_adj(X509_getm_notAfter(x), -86400));
  ASSERT_GT(X509_sign(x, key, nullptr), 0);
  f = fopen(out.c_str(), "w");
  ASSERT_TRUE(f);
  ASSERT_EQ(PEM_write_X509(f, x), 1);
  fclose(f);
  X509_free(x);
  EVP_PKEY_free(key);
}

class RefusalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    car_ = lab_.add_device("car-1");
    ca_pem_ = lab_.ca_dir() + "/ca.pem";
  }

  // Waits until the server log has more than `before` lines of `event`; returns them.
  std::vector<json> wait_events(const std::string& event, size_t before) {
    for (int i = 0; i < 250; ++i) {
      auto e = lab_.events(event);
      if (e.size() > before) return e;
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "no new '" << event << "' event in:\n" << read_file(lab_.log_path());
    return lab_.events(event);
  }

  // A good device still uploads.
  void expect_good_upload(uint64_t seed) {
    const std::string bundle = lab_.seal(car_, 200 << 10, 65536, seed);
    lab_.queue(car_, bundle);
    auto r = lab_.ship(car_);
    EXPECT_EQ(r.exit_code, 0) << r.output << read_file(lab_.log_path());
    EXPECT_TRUE(fs::exists(lab_.object_path(bundle))) << "a good device is served after the refusal";
  }

  // `d` ships one bundle and is refused at the handshake: nothing is stored, the agent fails,
  // the server logs why. Returns the server's reason.
  std::string expect_handshake_refused(const Device& d, uint64_t seed) {
    const std::string bundle = lab_.seal(car_, 100 << 10, 65536, seed);
    lab_.queue(d, bundle);
    const size_t before = lab_.events("handshake_failed").size();
    auto r = lab_.ship(d);
    EXPECT_NE(r.exit_code, 0) << r.output;
    auto out = IntakeLab::outcomes(r.output);
    for (const auto& o : out) EXPECT_NE(o["result"], "stored") << o;
    auto failed = wait_events("handshake_failed", before);
    EXPECT_FALSE(fs::exists(lab_.object_path(bundle))) << "nothing of it is stored";
    EXPECT_EQ(lab_.events("connected").size(), connected_) << "no session started";
    return failed.empty() ? "" : failed.back().value("reason", "");
  }

  // A raw client as `d`, past HELLO / WELCOME.
  std::unique_ptr<RawClient> raw(const Device& d, uint32_t* max_record = nullptr) {
    auto c = std::make_unique<RawClient>(lab_.port(), RawClient::context(ca_pem_, d));
    EXPECT_EQ(c->connect(), "");
    const uint32_t m = c->hello();
    if (max_record) *max_record = m;
    return c;
  }

  IntakeLab lab_;
  Device car_;
  std::string ca_pem_;
  size_t connected_ = 0;  // 'connected' events expected so far
};

TEST_F(RefusalTest, CertificatesThatMustNotPassAreRefusedAtTheHandshake) {
  lab_.start_server();
  // A device that uploads once, then is revoked while the server runs.
  Device rev = lab_.add_device("rev-1");
  {
    const std::string bundle = lab_.seal(rev, 100 << 10, 65536, 100);
    lab_.queue(rev, bundle);
    auto r = lab_.ship(rev);
    ASSERT_EQ(r.exit_code, 0) << r.output << read_file(lab_.log_path());
    EXPECT_TRUE(fs::exists(lab_.object_path(bundle)));
  }
  expect_good_upload(1);
  connected_ = lab_.events("connected").size();
  EXPECT_TRUE(lab_.events("crl_reloaded").empty());

  // Revoked, without a restart: the server re-reads the CRL.
  IntakeLab::must(IntakeLab::mlfx("ca revoke --ca " + lab_.ca_dir() + " --cert " + rev.cert));
  {
    const std::string bundle = lab_.seal(rev, 100 << 10, 65536, 101);
    lab_.queue(rev, bundle);
    const size_t before = lab_.events("handshake_failed").size();
    auto r = lab_.ship(rev);
    EXPECT_NE(r.exit_code, 0) << r.output;
    auto failed = wait_events("handshake_failed", before);
    EXPECT_CONTAINS(failed.back().dump(), "revoked");
    EXPECT_FALSE(fs::exists(lab_.object_path(bundle)));
    EXPECT_EQ(lab_.events("crl_reloaded").size(), 1u) << read_file(lab_.log_path());
    EXPECT_EQ(lab_.status(rev)["queue"].size(), 1u) << "the agent keeps the bundle";
  }
  EXPECT_EQ(lab_.events("connected").size(), connected_);
  expect_good_upload(2);
  connected_ = lab_.events("connected").size();

  // Expired.
  Device old = lab_.add_device("old-1");
  old.cert = lab_.dir() / "old-1-expired.pem";
  write_expired_copy(lab_.dir() / "old-1.pem", lab_.ca_dir(), old.cert);
  EXPECT_CONTAINS(expect_handshake_refused(old, 102), "expired");
  expect_good_upload(3);
  connected_ = lab_.events("connected").size();

  // Issued by another CA, for a key this CA knows (car-1's own key).
  IntakeLab::must(IntakeLab::mlfx("ca init --out " + lab_.dir() / "other-ca"));
  Device impostor{"car-1-other", car_.key, car_.pub, lab_.dir() / "other.pem"};
  IntakeLab::must(IntakeLab::mlfx("ca issue --ca " + lab_.dir() / "other-ca" + " --device " + car_.pub +
                                  " --id car-1 --out " + impostor.cert));
  EXPECT_CONTAINS(expect_handshake_refused(impostor, 103), "certificate");
  expect_good_upload(4);
  connected_ = lab_.events("connected").size();

  // No client certificate at all.
  {
    const size_t before = lab_.events("handshake_failed").size();
    RawClient c(lab_.port(), RawClient::context_without_certificate(ca_pem_));
    const std::string hs = c.connect();  // in TLS 1.3 the server's refusal may come after the client's Finished
    if (hs.empty()) {
      c.send_json(FrameType::kHello, wire::to_json(wire::Hello{{1}, "no-cert"}));
      In in = c.read();
      EXPECT_FALSE(in.ok) << in.describe();
    }
    auto failed = wait_events("handshake_failed", before);
    EXPECT_CONTAINS(failed.back().dump(), "certificate");
  }
  expect_good_upload(5);

  // No TLS at all: an HTTP request, then a HELLO frame in the clear.
  for (const std::string& bytes :
       {std::string("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        [] {
          Bytes f = wire::encode_json_frame(FrameType::kHello, wire::to_json(wire::Hello{{1}, "plain"}));
          return std::string(f.begin(), f.end());
        }()}) {
    const size_t before = lab_.events("handshake_failed").size();
    EXPECT_NE(plaintext_exchange(lab_.port(), bytes), "timeout") << "the server closes a plaintext connection";
    wait_events("handshake_failed", before);
    expect_good_upload(6 + bytes.size());
  }
  EXPECT_EQ(lab_.events("connected").size(), connected_ + 3) << "only the good uploads had sessions";
  EXPECT_TRUE(lab_.server_running());
}

// One bundle uploaded on its own connection the whole time the bad connections come and go.
// Its records go out paced, and the last one waits for release() (PINGs keep the link alive
// meanwhile), so the overlap is certain however slow the machine: no timing in the test.
class HeldUpload {
 public:
  HeldUpload(std::unique_ptr<RawClient> c, RawBundle b) : c_(std::move(c)), b_(std::move(b)) {
    thread_ = std::thread([this] {
      outcome_ = run();
      done_ = true;
    });
  }
  HeldUpload(const HeldUpload&) = delete;
  ~HeldUpload() { finish(); }
  bool sending() const { return !done_; }
  // Lets the last record go; the server's answer to the upload ("RECEIPT ..." or what went wrong).
  std::string finish() {
    released_ = true;
    if (thread_.joinable()) thread_.join();
    return outcome_;
  }

 private:
  std::string run() {
    if (auto e = c_->send_json(FrameType::kOffer, wire::to_json(b_.offer)); !e.empty()) return e;
    if (In st = c_->read(); st.type != FrameType::kStatus) return "no STATUS: " + st.describe();
    for (const Unit& u : b_.metadata)
      if (auto e = c_->send_record(b_, u); !e.empty()) return e;
    for (size_t i = 0; i + 1 < b_.chunks.size(); ++i) {
      if (auto e = c_->send_record(b_, b_.chunks[i]); !e.empty()) return e;
      std::this_thread::sleep_for(20ms);
    }
    while (!released_) {
      if (auto e = c_->send_json(FrameType::kPing, json::object()); !e.empty()) return e;
      if (In p = c_->read(); p.type != FrameType::kPong) return "no PONG: " + p.describe();
      std::this_thread::sleep_for(200ms);
    }
    if (auto e = c_->send_record(b_, b_.chunks.back()); !e.empty()) return e;
    const std::string answer = c_->read(30s).describe();
    c_.reset();  // the end of the session, where the intake logs the upload
    return answer;
  }

  std::unique_ptr<RawClient> c_;
  RawBundle b_;
  std::atomic<bool> released_{false}, done_{false};
  std::string outcome_;
  std::thread thread_;
};

class MalformedTest : public RefusalTest {
 protected:
  void start_background_upload() {
    background_bundle_ = lab_.seal(car_, 4 << 20, 65536, 900);
    background_ = std::make_unique<HeldUpload>(raw(car_), cut(background_bundle_));
  }
  void expect_background_upload_unaffected() {
    EXPECT_TRUE(background_->sending()) << "the held upload was cut while the bad connections came and went";
    const std::string outcome = background_->finish();
    EXPECT_EQ(outcome.rfind("RECEIPT ", 0), 0u) << outcome << read_file(lab_.log_path());
    ASSERT_TRUE(fs::exists(lab_.object_path(background_bundle_))) << read_file(lab_.log_path());
    EXPECT_EQ(read_file(lab_.object_path(background_bundle_)), read_file(background_bundle_));
    const std::string digest = IntakeLab::digest_of(background_bundle_);
    const uint64_t size = fs::file_size(background_bundle_);
    bool one_connection = false;  // the intake logs the upload when the session ends
    for (int i = 0; i < 250 && !one_connection; ++i, std::this_thread::sleep_for(20ms))
      for (const auto& e : lab_.events("upload"))
        one_connection |= e["bundle_digest"] == digest && e["result"] == "stored" && e["received_bytes"] == size;
    EXPECT_TRUE(one_connection) << "stored in one go, never cut: " << read_file(lab_.log_path());
  }

  std::string background_bundle_;
  std::unique_ptr<HeldUpload> background_;
};

TEST_F(MalformedTest, EachBadConnectionGetsItsErrorAndTheOthersGoOn) {
  lab_.start_server();
  Device van = lab_.add_device("van-2");
  // Sealed before the clock starts: a bundle of van-2's to send with a bad chunk in it.
  const std::string tampered_path = lab_.seal(van, 512 << 10, 65536, 50);
  const RawBundle tb = cut(tampered_path);
  ASSERT_GE(tb.chunks.size(), 6u);
  start_background_upload();

  {  // unknown frame type

    SCOPED_TRACE("unknown frame type");
    auto c = raw(van);
    c->send_frame(FrameType(99), as_bytes("{}"));
    c->expect_refused("bad_frame");
  }
  {  // nonzero flags
    SCOPED_TRACE("nonzero flags");
    auto c = raw(van);
    c->send_frame(FrameType::kPing, as_bytes("{}"), 1);
    c->expect_refused("bad_frame");
  }
  {  // a control frame over 64 KiB, body and all
    SCOPED_TRACE("a control frame over 64 KiB, body and all");
    auto c = raw(van);
    c->send_frame(FrameType::kOffer, as_bytes(std::string(wire::kMaxControlBody + 1, ' ')));
    c->expect_refused("frame_too_large");
  }
  {  // a RECORD over the WELCOME's max_record: refused from its header, before its body
    SCOPED_TRACE("a RECORD over the WELCOME's max_record: refused from its header, before its body");
    uint32_t max_record = 0;
    auto c = raw(van, &max_record);
    ASSERT_GT(max_record, 0u);
    c->send_json(FrameType::kOffer, wire::to_json(tb.offer));  // RECORDs are taken only after an OFFER
    ASSERT_EQ(c->read().type, FrameType::kStatus);
    auto h = wire::encode_frame_header(FrameType::kRecord, max_record + 1);
    c->send(ByteView(h));
    c->send(std::string(1 << 20, 'r'));
    c->expect_refused("frame_too_large");
  }
  {  // garbage JSON in HELLO
    SCOPED_TRACE("garbage JSON in HELLO");
    RawClient c(lab_.port(), RawClient::context(ca_pem_, van));
    ASSERT_EQ(c.connect(), "");
    c.send_frame(FrameType::kHello, as_bytes("{\"protocol\": \"mlfx-intake\", \"versions\": [1"));
    c.expect_refused("bad_frame");
  }
  {  // a RECORD before any OFFER
    SCOPED_TRACE("a RECORD before any OFFER");
    auto c = raw(van);
    c->send_record(tb, tb.metadata[0]);
    c->expect_refused("bad_frame");
  }
  {  // absurd offers
    SCOPED_TRACE("absurd offers");
    wire::Offer o = tb.offer;
    o.file_size = uint64_t(1) << 62;
    auto c = raw(van);
    c->send_json(FrameType::kOffer, wire::to_json(o));
    c->expect_refused("bundle_too_large");
    o = tb.offer;
    o.file_size = 3;
    c = raw(van);
    c->send_json(FrameType::kOffer, wire::to_json(o));
    c->expect_refused("bad_bundle");
    o = tb.offer;
    o.chunk_size = 0;
    c = raw(van);
    c->send_json(FrameType::kOffer, wire::to_json(o));
    c->expect_refused("bad_frame");
    c = raw(van);
    c->send_json(FrameType::kOffer,
                 ::mlfx::json::Json{{"bundle_id", "zz"}, {"file_size", -1}, {"bundle_digest", 7}, {"chunk_size", 1}});
    c->expect_refused("bad_frame");
  }
  {  // a chunk record whose bytes do not match its signed hash
    SCOPED_TRACE("a chunk record whose bytes do not match its signed hash");
    auto c = raw(van);
    c->send_json(FrameType::kOffer, wire::to_json(tb.offer));
    In st = c->read();
    ASSERT_EQ(st.type, FrameType::kStatus) << st.describe();
    EXPECT_EQ(wire::parse_status(as_bytes(st.body))->state, wire::UploadState::kNew);
    for (const Unit& u : tb.metadata) ASSERT_EQ(c->send_record(tb, u), "");
    ASSERT_EQ(c->send_record(tb, tb.chunks[0]), "");
    ASSERT_EQ(c->send_record(tb, tb.chunks[1]), "");
    RawBundle flipped = tb;
    flipped.bytes[tb.chunks[2].offset + tb.chunks[2].size / 2] ^= 0x20;
    ASSERT_EQ(c->send_record(flipped, tb.chunks[2]), "");
    c->send_record(tb, tb.chunks[3]);  // a client streams on; the check may answer one record later
    c->expect_refused("bad_record");
  }
  {  // a RECORD at an offset that is not a unit's (the metadata is already held)
    SCOPED_TRACE("a RECORD at an offset that is not a unit's (the metadata is already held)");
    auto c = raw(van);
    c->send_json(FrameType::kOffer, wire::to_json(tb.offer));
    In st = c->read();
    ASSERT_EQ(st.type, FrameType::kStatus) << st.describe();
    auto status = wire::parse_status(as_bytes(st.body));
    ASSERT_TRUE(status);
    EXPECT_EQ(status->state, wire::UploadState::kPartial);
    // The metadata and the two good chunks before the bad one were kept.
    ASSERT_FALSE(status->have.empty());
    EXPECT_EQ(status->have[0].offset, 0u);
    EXPECT_EQ(status->have[0].length, tb.chunks[2].offset);
    Unit off = tb.chunks[4];
    off.offset += 16;
    c->send(wire::encode_frame(FrameType::kRecord, wire::encode_record_body(off.offset, tb.unit(tb.chunks[4]))));
    c->expect_refused("bad_record");
  }
  {  // a metadata unit off its offset: found when the metadata is complete, and nothing is kept
    SCOPED_TRACE("a metadata unit off its offset");
    const std::string other = lab_.seal(van, 256 << 10, 65536, 51);
    const RawBundle ob = cut(other);
    auto c = raw(van);
    c->send_json(FrameType::kOffer, wire::to_json(ob.offer));
    ASSERT_EQ(c->read().type, FrameType::kStatus);
    for (size_t i = 0; i < ob.metadata.size(); ++i) {
      const Unit& u = ob.metadata[i];
      if (i == 1) c->send(wire::encode_frame(FrameType::kRecord, wire::encode_record_body(u.offset - 8, ob.unit(u))));
      else c->send_record(ob, u);
    }
    c->expect_refused("bad_bundle");
    for (const auto& dev : list_dir(lab_.store() + "/partial"))
      for (const auto& name : list_dir(lab_.store() + "/partial/" + dev))
        EXPECT_EQ(name.find(ob.offer.bundle_id), std::string::npos) << "kept: " << name;
  }
  {  // a chunk record before the metadata is complete
    SCOPED_TRACE("a chunk record before the metadata");
    const std::string other = lab_.seal(van, 256 << 10, 65536, 52);
    const RawBundle ob = cut(other);
    auto c = raw(van);
    c->send_json(FrameType::kOffer, wire::to_json(ob.offer));
    ASSERT_EQ(c->read().type, FrameType::kStatus);
    c->send_record(ob, ob.metadata[0]);
    c->send_record(ob, ob.chunks[0]);
    c->expect_refused("bad_record");
  }
  expect_background_upload_unaffected();

  // The bundle that met a bad record resumes from what was verified, and is stored intact.
  lab_.queue(van, tampered_path);
  auto r = lab_.ship(van);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = IntakeLab::outcomes(r.output);
  ASSERT_EQ(out.size(), 1u);
  uint64_t verified = tb.chunks[0].size + tb.chunks[1].size;  // the two chunks before the bad one
  for (const Unit& u : tb.metadata) verified += u.size;
  EXPECT_EQ(out[0]["held_before"], verified) << out[0];
  EXPECT_EQ(read_file(lab_.object_path(tampered_path)), tb.bytes);
  // Each refused connection is in the log with its error.
  std::map<std::string, int> results;
  for (const auto& e : lab_.events("upload")) results[e["result"]]++;
  EXPECT_EQ(results["bad_record"], 3) << read_file(lab_.log_path());
  EXPECT_EQ(results["stored"], 2);
  EXPECT_TRUE(lab_.server_running());
}

TEST_F(MalformedTest, ASilentConnectionGetsIdleTimeout) {
  lab_.start_server("--idle-timeout 1");
  Device van = lab_.add_device("van-2");
  start_background_upload();
  auto c = raw(van);
  const auto start = std::chrono::steady_clock::now();
  c->expect_refused("idle_timeout", 5s);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.9);
  EXPECT_LT(waited, 4.0);
  // Silent straight after the handshake, before HELLO: the same.
  RawClient quiet(lab_.port(), RawClient::context(ca_pem_, van));
  ASSERT_EQ(quiet.connect(), "");
  quiet.expect_refused("idle_timeout", 5s);
  expect_background_upload_unaffected();
  bool logged = false;
  for (const auto& e : lab_.events("disconnected")) logged |= e["end"] == "idle timeout";
  EXPECT_TRUE(logged) << read_file(lab_.log_path());
}

}  // namespace
}  // namespace mlfx::testing
