// Capture requests from the lab, end to end: `mlfx request capture` queues a signed request in
// a real `mlfx serve`'s store, the agent's LabRequestPoller fetches it over mutual TLS on
// loopback with a real device certificate, verifies it and acknowledges it; the intake records
// the delivery (request list, a signed journal note) and never hands one device's requests to
// another, whatever lies in the queue.
#include <sys/stat.h>

#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "intake/intake_lab.h"
#include "mlfx/base/bytes.h"
#include "mlfx/base/json.h"
#include "mlfx/crypto/hash.h"
#include "mlfx/crypto/keys.h"
#include "upload/lab_requests.h"

namespace mlfx::testing {
namespace {

using agent::LabRequest;
using agent::LabRequestPoller;
using nlohmann::json;

class LabRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    car_ = lab_.add_device("car-17");
    van_ = lab_.add_device("van-2");
    IntakeLab::must(IntakeLab::mlfx("keys gen --kind request --out " + lab_.dir() / "requests"));
    IntakeLab::must(IntakeLab::mlfx("keys gen --kind request --out " + lab_.dir() / "stranger"));
    lab_.start_server();
  }

  // `mlfx request capture` into the intake's store; returns the request id.
  std::string request(const std::string& device, const std::string& what, const std::string& key = "requests",
                      const std::string& extra = "") {
    auto r = IntakeLab::mlfx("request capture --device " + device + " " + what + " --reason 'incident 42' --key " +
                             lab_.dir() / (key + ".key") + " --requester alice --store " + lab_.store() + " --json " +
                             extra);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto j = json::parse(r.output, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.output;
    return j.is_object() ? j["signed_request"]["request"]["request_id"].get<std::string>() : "";
  }

  LabRequestPoller poller(const Device& d, const std::string& device_id = "") {
    agent::daemon::UploadSpec upload;
    upload.server = "127.0.0.1:" + std::to_string(lab_.port());
    upload.ca = lab_.ca_dir() + "/ca.pem";
    upload.crl = lab_.ca_dir() + "/crl.pem";
    upload.cert = d.cert;
    upload.key = d.key;
    upload.intake_key = lab_.dir() / "intake.pub";
    agent::daemon::LabRequestSpec spec;
    spec.signers = {lab_.dir() / "requests.pub"};
    const std::string state = lab_.dir() / ("state-" + d.id);
    ::mkdir(state.c_str(), 0700);
    auto p = LabRequestPoller::create(upload, spec, device_id.empty() ? d.id : device_id, state);
    EXPECT_TRUE(p) << p.error().to_string();
    return std::move(*p);
  }

  std::vector<Result<LabRequest>> poll(LabRequestPoller& p) {
    auto r = p.poll();
    EXPECT_TRUE(r) << r.error().to_string();
    return r ? std::move(*r) : std::vector<Result<LabRequest>>{};
  }

  json listed() {
    auto r = IntakeLab::mlfx("request list --store " + lab_.store() + " --json");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return json::parse(r.output, nullptr, false)["requests"];
  }
  json listed(const std::string& request_id) {
    for (const auto& q : listed())
      if (q.contains("request") && q["request"]["request_id"] == request_id) return q;
    return json();
  }
  std::string pending(const std::string& device, const std::string& id) const {
    return lab_.store() + "/requests/pending/" + device + "/" + id + ".json";
  }

  IntakeLab lab_;
  Device car_, van_;
};

TEST_F(LabRequestTest, ARequestReachesItsDeviceOnceVerifiedAndItsDeliveryIsRecorded) {
  const std::string id = request("car-17", "--target resnet");
  const std::string for_van = request("van-2", "--pid 4242");
  LabRequestPoller car = poller(car_);

  auto got = poll(car);
  ASSERT_EQ(got.size(), 1u) << "car-17 gets its own request and not van-2's";
  ASSERT_TRUE(got[0]) << got[0].error().to_string();
  EXPECT_EQ(got[0]->request_id, id);
  EXPECT_EQ(got[0]->device, "car-17");
  EXPECT_EQ(got[0]->target, "resnet");
  EXPECT_EQ(got[0]->reason, "incident 42");
  EXPECT_EQ(got[0]->requester, "alice");
  auto signer = crypto::load_public_key_file(lab_.dir() / "requests.pub");
  ASSERT_TRUE(signer);
  EXPECT_EQ(got[0]->signer_fingerprint, signer->verify->fingerprint());

  EXPECT_TRUE(poll(car).empty()) << "a second poll finds nothing";

  // The intake's record: delivered to car-17's certificate, accepted by the device.
  const json q = listed(id);
  EXPECT_EQ(q["state"], "delivered") << q;
  EXPECT_EQ(q["delivery"]["device_id"], "car-17");
  EXPECT_EQ(q["delivery"]["device_result"], "accepted");
  auto car_pub = crypto::load_public_key_file(car_.pub);
  ASSERT_TRUE(car_pub);
  EXPECT_EQ(q["delivery"]["device_key_fingerprint"], car_pub->verify->fingerprint());
  EXPECT_EQ(q["delivery"]["request_sha256"],
            to_hex(crypto::sha256(as_bytes(got[0]->signed_request + "\n"))));
  EXPECT_EQ(listed(for_van)["state"], "pending") << "van-2's request waits for van-2";
  EXPECT_EQ(lab_.events("request_delivered").size(), 1u) << read_file(lab_.log_path());

  // A signed note in the store's journal, chained like the others.
  std::istringstream journal(read_file(lab_.store() + "/journal.jsonl"));
  std::string line;
  ASSERT_TRUE(std::getline(journal, line));
  json note = json::parse(line);
  EXPECT_EQ(note["type"], "request_delivered");
  EXPECT_EQ(note["details"]["request_id"], id);
  auto intake = crypto::load_public_key_file(lab_.dir() / "intake.pub");
  auto sig = from_base64(note["signature"].get<std::string>());
  ASSERT_TRUE(intake && sig);
  note.erase("signature");
  EXPECT_TRUE(intake->verify->verify(as_bytes("mlfx-intake-v1 journal\n" + ::mlfx::json::canonical(note)), *sig));

  // van-2 gets its own.
  LabRequestPoller van = poller(van_);
  auto van_got = poll(van);
  ASSERT_EQ(van_got.size(), 1u);
  ASSERT_TRUE(van_got[0]) << van_got[0].error().to_string();
  EXPECT_EQ(van_got[0]->pid, 4242);
  EXPECT_EQ(van_got[0]->request_id, for_van);
}

TEST_F(LabRequestTest, AnotherDevicesRequestPlacedInTheQueueIsNeverDelivered) {
  const std::string for_van = request("van-2", "--target resnet");
  // Someone puts van-2's request where car-17's wait: the intake reads the id inside.
  const std::string planted = pending("car-17", for_van);
  fs::create_directories(fs::path(planted).parent_path());
  fs::copy_file(pending("van-2", for_van), planted);
  LabRequestPoller car = poller(car_);
  EXPECT_TRUE(poll(car).empty());
  EXPECT_FALSE(fs::exists(planted));
  EXPECT_TRUE(fs::exists(lab_.store() + "/requests/refused/car-17/" + for_van + ".json"));
  ASSERT_EQ(lab_.events("request_refused").size(), 1u);
  EXPECT_NE(lab_.events("request_refused")[0]["reason"].get<std::string>().find("for device 'van-2'"),
            std::string::npos);
  EXPECT_EQ(listed(for_van)["state"], "pending") << "van-2's own copy still waits for van-2";
}

TEST_F(LabRequestTest, RefusalsReachTheLabAndAReplayIsRefused) {
  const std::string id = request("car-17", "--target resnet");
  LabRequestPoller car = poller(car_);
  ASSERT_EQ(poll(car).size(), 1u);

  // The honoured request comes back (restored from a backup, say), with one signed by a key
  // this device does not trust.
  fs::copy_file(lab_.store() + "/requests/delivered/car-17/" + id + ".json", pending("car-17", id));
  fs::remove(lab_.store() + "/requests/delivered/car-17/" + id + ".json");
  const std::string stranger = request("car-17", "--target resnet", "stranger");

  // The agent restarted meanwhile: its nonce store is read back from disk.
  LabRequestPoller restarted = [&] {
    { LabRequestPoller gone = std::move(car); }
    return poller(car_);
  }();
  auto got = poll(restarted);
  ASSERT_EQ(got.size(), 2u);
  for (const auto& r : got) {
    ASSERT_FALSE(r);
    const std::string why = r.error().to_string();
    EXPECT_TRUE(why.find("replayed") != std::string::npos || why.find("not among") != std::string::npos) << why;
  }
  EXPECT_EQ(listed(id)["delivery"]["device_result"], "refused");
  EXPECT_NE(listed(id)["delivery"]["device_reason"].get<std::string>().find("replayed"), std::string::npos);
  EXPECT_NE(listed(stranger)["delivery"]["device_reason"].get<std::string>().find("not among"), std::string::npos);
  EXPECT_TRUE(poll(restarted).empty());
}

TEST_F(LabRequestTest, ARequestExpiredAtTheIntakeIsNotDelivered) {
  const std::string id = request("car-17", "--target resnet", "requests", "--ttl 1s");
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  LabRequestPoller car = poller(car_);
  EXPECT_TRUE(poll(car).empty());
  EXPECT_EQ(listed(id)["state"], "expired");
}

TEST_F(LabRequestTest, AnAgentWhoseDeviceIdIsNotItsCertificatesIsToldSo) {
  request("car-17", "--target resnet");
  LabRequestPoller misnamed = poller(car_, "car-99");
  auto r = misnamed.poll();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("as 'car-17', but this agent's device id is 'car-99'"), std::string::npos)
      << r.error().to_string();
  LabRequestPoller car = [&] {
    { LabRequestPoller gone = std::move(misnamed); }
    return poller(car_);
  }();
  EXPECT_EQ(poll(car).size(), 1u) << "nothing was taken by the misnamed poll";
}

}  // namespace
}  // namespace mlfx::testing
