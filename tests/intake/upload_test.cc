// Shipping evidence end to end on loopback: `mlfx-agent ship` against a real `mlfx serve`
// over mutual TLS 1.3, with kills of either side, duplicates, two devices at once, a device
// presenting another's bundle and a full disk.
#include <sys/mount.h>

#include <random>

#include "intake/raw_client.h"

namespace mlfx::testing {
namespace {

using nlohmann::json;

constexpr size_t kUnitOverhead = 32 + 16;  // record header + GCM tag around a chunk

class UploadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    car_ = lab_.add_device("car-1");
    lab_.start_server();
  }

  // Everything a stored bundle must have: the same bytes, a verifying bundle, the custody log
  // extended by the intake's signed 'received' event, a receipt in the device's spool.
  void expect_stored(const std::string& bundle, const Device& d) {
    const std::string object = lab_.object_path(bundle);
    ASSERT_TRUE(fs::exists(object)) << read_file(lab_.log_path());
    EXPECT_EQ(read_file(object), read_file(bundle));
    EXPECT_EQ(fs::status(object).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::group_read);
    auto verify = IntakeLab::mlfx("bundle verify -q --trusted-devices " + lab_.trusted() + " " + object);  // attributed
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
    const std::string stem = object.substr(0, object.size() - 5);
    std::istringstream custody(read_file(stem + ".custody.jsonl"));
    std::vector<json> events;
    for (std::string line; std::getline(custody, line);) events.push_back(json::parse(line));
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[2]["type"], "received");
    EXPECT_EQ(events[2]["actor"]["role"], "intake");
    EXPECT_EQ(events[2]["details"]["device_id"], d.id);
    const json receipt = json::parse(read_file(stem + ".receipt.json"));
    EXPECT_EQ(receipt["receipt"]["bundle_digest"], IntakeLab::digest_of(bundle));
    bool in_spool = false;
    for (const auto& name : list_dir(lab_.spool(d) + "/receipts"))
      in_spool |= json::parse(read_file(lab_.spool(d) + "/receipts/" + name)) == receipt;
    EXPECT_TRUE(in_spool) << "the device keeps the intake's receipt";
  }

  // The one upload a `ship --once` run made, which must have ended with `exit_code`.
  json only_outcome(const CommandResult& r, int exit_code) {
    EXPECT_EQ(r.exit_code, exit_code) << r.output;
    auto out = IntakeLab::outcomes(r.output);
    EXPECT_EQ(out.size(), 1u) << r.output;
    return out.empty() ? json::object() : out[0];
  }

  uint64_t received_bytes(const std::string& bundle_sha) {
    uint64_t total = 0;
    for (const auto& e : lab_.events("upload"))
      if (e["bundle_digest"] == bundle_sha) total += e["received_bytes"].get<uint64_t>();
    return total;
  }

  IntakeLab lab_;
  Device car_;
};

TEST_F(UploadTest, StoresTheBundleByteForByteWithCustodyAndReceipt) {
  const std::string bundle = lab_.seal(car_, 3 << 20, 65536, 1);
  lab_.queue(car_, bundle);
  json out = only_outcome(lab_.ship(car_), 0);
  EXPECT_EQ(out["result"], "stored");
  EXPECT_EQ(out["sent_bytes"], fs::file_size(bundle));
  expect_stored(bundle, car_);
  json st = lab_.status(car_);
  EXPECT_TRUE(st["queue"].empty());
  EXPECT_EQ(st["receipts"], 1);
  for (const auto& dev : list_dir(lab_.store() + "/partial"))
    EXPECT_TRUE(list_dir(lab_.store() + "/partial/" + dev).empty()) << "no partial upload is left";
}

TEST_F(UploadTest, DuplicateUploadSendsNothingAndGetsTheSameReceipt) {
  const std::string bundle = lab_.seal(car_, 1 << 20, 65536, 2);
  lab_.queue(car_, bundle);
  ASSERT_EQ(lab_.ship(car_).exit_code, 0);
  const std::string receipt = read_file(lab_.store() + "/objects/" + IntakeLab::digest_of(bundle) + ".receipt.json");
  lab_.queue(car_, bundle);  // the operator queues it again
  json out = only_outcome(lab_.ship(car_), 0);
  EXPECT_EQ(out["result"], "duplicate");
  EXPECT_EQ(out["sent_bytes"], 0);
  EXPECT_EQ(read_file(lab_.store() + "/objects/" + IntakeLab::digest_of(bundle) + ".receipt.json"), receipt);
  EXPECT_EQ(lab_.objects().size(), 3u) << "one object, its custody log and receipt";
  EXPECT_EQ(lab_.status(car_)["receipts"], 2);
}

// --bandwidth paces the upload: 3 MiB at 1 MiB/s cannot take much less than 3 s.
TEST_F(UploadTest, BandwidthLimitPacesTheUpload) {
  const std::string bundle = lab_.seal(car_, 3 << 20, 65536, 10);
  lab_.queue(car_, bundle);
  json out = only_outcome(lab_.ship(car_, "--once --bandwidth 1M"), 0);
  EXPECT_EQ(out["result"], "stored");
  EXPECT_GE(out.value("seconds", 0.0), 2.5) << out;
  expect_stored(bundle, car_);
}

TEST_F(UploadTest, ResumesAfterTheAgentIsKilledAtRandomPoints) {
  const uint32_t chunk = 256 << 10;
  const std::string bundle = lab_.seal(car_, 24 << 20, chunk, 3);
  lab_.queue(car_, bundle);
  std::mt19937 rng(3);
  const int kills = 4;
  for (int i = 0; i < kills; ++i) {
    Background ship(lab_.ship_command(car_, "--once --bandwidth 6M"));
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(150, 900)(rng)));
    ship.kill(SIGKILL);
  }
  json out = only_outcome(lab_.ship(car_), 0);
  EXPECT_GT(out.value("held_before", uint64_t(0)), 0u) << "the last run resumed";
  expect_stored(bundle, car_);
  // Each kill loses at most the unit in flight, or the metadata when it came before the
  // metadata was complete (the intake checks the metadata as one).
  const uint64_t size = fs::file_size(bundle);
  const uint64_t metadata = 64 + 32 + (24 << 20) / chunk * 48 + 64 * 1024;  // generous for MNFT/CUST
  const uint64_t resent = received_bytes(IntakeLab::digest_of(bundle)) - size;
  EXPECT_LE(resent, kills * (chunk + kUnitOverhead + metadata)) << read_file(lab_.log_path());
}

TEST_F(UploadTest, ResumesAfterTheServerIsKilled) {
  const std::string bundle = lab_.seal(car_, 24 << 20, 256 << 10, 4);
  lab_.queue(car_, bundle);
  Background ship(lab_.ship_command(car_, "--until-empty --bandwidth 8M --timeout 2 --backoff-min 0.2 --backoff-max 1"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  lab_.stop_server(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  lab_.start_server();
  ASSERT_EQ(ship.wait(), 0) << read_file(lab_.log_path());
  expect_stored(bundle, car_);
  // The restarted intake found what the killed one had verified, by hashing its partial.
  bool resumed = false;
  for (const auto& e : lab_.events("upload")) resumed |= e["result"] == "stored" && e["received_bytes"] < fs::file_size(bundle);
  EXPECT_TRUE(resumed) << read_file(lab_.log_path());
}

TEST_F(UploadTest, TwoDevicesUploadInParallel) {
  Device van = lab_.add_device("van-2");
  const std::string a = lab_.seal(car_, 12 << 20, 65536, 5);
  const std::string b = lab_.seal(van, 12 << 20, 65536, 6);
  lab_.queue(car_, a);
  lab_.queue(van, b);
  Background ship_a(lab_.ship_command(car_, "--once --bandwidth 20M"));
  Background ship_b(lab_.ship_command(van, "--once --bandwidth 20M"));
  EXPECT_EQ(ship_a.wait(), 0);
  EXPECT_EQ(ship_b.wait(), 0);
  expect_stored(a, car_);
  expect_stored(b, van);
  // They really overlapped: both were connected at once at some point.
  auto connected = lab_.events("connected");
  auto gone = lab_.events("disconnected");
  ASSERT_EQ(connected.size(), 2u);
  ASSERT_EQ(gone.size(), 2u);
  EXPECT_LT(connected[1]["time"].get<std::string>(), gone[0]["time"].get<std::string>());
}

TEST_F(UploadTest, ADeviceCannotUploadAnotherDevicesBundle) {
  Device thief = lab_.add_device("thief");
  const std::string bundle = lab_.seal(car_, 1 << 20, 65536, 7);
  lab_.queue(thief, bundle);
  json out = only_outcome(lab_.ship(thief), 1);
  EXPECT_EQ(out["result"], "rejected");
  EXPECT_EQ(out["code"], "wrong_device");
  EXPECT_NE(out.value("error", "").find("car-1"), std::string::npos) << out;
  EXPECT_TRUE(lab_.objects().empty());
  // Nothing of it is kept at the intake; the agent keeps it aside for an operator.
  for (const auto& dev : list_dir(lab_.store() + "/partial"))
    EXPECT_TRUE(list_dir(lab_.store() + "/partial/" + dev).empty()) << dev;
  json st = lab_.status(thief);
  EXPECT_TRUE(st["queue"].empty());
  ASSERT_EQ(st["rejected"].size(), 1u);
  // The rightful device ships it fine afterwards.
  lab_.queue(car_, bundle);
  EXPECT_EQ(lab_.ship(car_).exit_code, 0);
  expect_stored(bundle, car_);
}

// Authenticated sessions over --max-connections get ERROR busy (and the log says so); the
// limit frees up as sessions end. A connection that never finishes its handshake holds no
// session (tests/adversarial/intake: it cannot lock devices out).
TEST_F(UploadTest, SessionsOverTheLimitAreRefusedBusy) {
  lab_.start_server("--max-connections 1");
  auto held = std::make_unique<RawClient>(lab_.port(), RawClient::context(lab_.ca_dir() + "/ca.pem", car_));
  ASSERT_EQ(held->connect(), "");
  held->hello();  // one session, idle
  const std::string bundle = lab_.seal(car_, 100000, 4096, 11);
  lab_.queue(car_, bundle);
  auto r = lab_.ship(car_, "--once --timeout 5");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("\"pass\":\"failed\""), std::string::npos) << r.output;
  json st = lab_.status(car_);
  ASSERT_EQ(st["queue"].size(), 1u);
  EXPECT_EQ(st["queue"][0]["attempts"], 1);
  EXPECT_NE(st["queue"][0]["last_error"].get<std::string>().find("busy"), std::string::npos) << st;
  bool refused = false;
  for (const auto& e : lab_.events("refused")) refused |= e.value("reason", "") == "connection limit";
  EXPECT_TRUE(refused) << read_file(lab_.log_path());
  held.reset();
  for (int i = 0; i < 100 && lab_.events("disconnected").empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  only_outcome(lab_.ship(car_), 0);
  expect_stored(bundle, car_);
}

// A store on a small tmpfs: a bundle that does not fit is refused before any chunk moves (its
// space is reserved once its metadata verifies), a bundle whose custody log and receipt do not
// fit is not stored at all, and both go through once there is room.
TEST_F(UploadTest, FullDiskGivesNoReceiptAndStoresNothingThatLooksValid) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs as the store";
  lab_.stop_server();
  fs::create_directories(lab_.store());
  const std::string bundle = lab_.seal(car_, 2 << 20, 65536, 8);
  const uint64_t pages = (fs::file_size(bundle) + 4095) / 4096;
  // Room for the partial and its metadata note, not for the custody log and receipt.
  const std::string size = std::to_string((pages + 1) * 4096);
  ASSERT_EQ(mount("tmpfs", lab_.store().c_str(), "tmpfs", 0, ("size=" + size).c_str()), 0) << strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{lab_.store()};
  lab_.start_server();
  lab_.queue(car_, bundle);
  json out = only_outcome(lab_.ship(car_), 1);
  EXPECT_EQ(out["result"], "failed");
  EXPECT_EQ(out["code"], "store_failed") << out;
  for (const auto& name : lab_.objects()) ADD_FAILURE() << "left in the store: " << name;
  json st = lab_.status(car_);
  ASSERT_EQ(st["queue"].size(), 1u) << "the bundle stays in the spool";
  EXPECT_EQ(st["queue"][0]["attempts"], 1);
  EXPECT_EQ(st["receipts"], 0);

  // A bigger bundle sends its metadata and no chunk: its space is reserved before any.
  const std::string big = lab_.seal(car_, 4 << 20, 65536, 9);
  lab_.queue(car_, big);
  auto r = lab_.ship(car_);
  EXPECT_EQ(r.exit_code, 1);
  for (const auto& name : lab_.objects()) ADD_FAILURE() << "left in the store: " << name;

  // Room again: both go through, the first one resumed from its verified partial.
  lab_.stop_server();
  ASSERT_EQ(mount("tmpfs", lab_.store().c_str(), "tmpfs", MS_REMOUNT, "size=64m"), 0) << strerror(errno);
  lab_.start_server();
  r = lab_.ship(car_);
  ASSERT_EQ(r.exit_code, 0) << r.output << read_file(lab_.log_path());
  expect_stored(bundle, car_);
  expect_stored(big, car_);
}

}  // namespace
}  // namespace mlfx::testing
