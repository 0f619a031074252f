// Issue 11, items 5 and 8 (names on the terminal): what the lab says about a bundle is exactly
// what it checked. A valid signature proves only who held the key; the device id in the
// manifest is the signer's claim until a trust store (the lab CA, or <device-id>.pub keys)
// binds that key to that id. Real `mlfx` and `mlfx-agent` binaries, a real intake on loopback.
#include "intake/intake_lab.h"

namespace mlfx::testing {
namespace {

using nlohmann::json;

constexpr int kExitIdentityUnverified = 5;

class VerdictTest : public ::testing::Test {
 protected:
  // A bundle sealed by `key` that claims to come from `device_id`.
  std::string seal(const std::string& key, const std::string& device_id, const std::string& name,
                   const std::string& extra = "") {
    const std::string out = lab_.dir() / (name + ".mlfx");
    write_file(lab_.dir() / "data", random_string(100000, 7));
    IntakeLab::must(IntakeLab::mlfx("bundle seal " + (lab_.dir() / "data") + " --out " + out + " --device-key " + key +
                                    " --recipient " + (lab_.dir() / "lab.pub") + " --device-id " + device_id + " -q " + extra));
    return out;
  }
  static json parse(const CommandResult& r) {
    json j = json::parse(r.output.substr(std::min(r.output.find('{'), r.output.size())), nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.output;
    return j;
  }
  static json check(const json& verification, const std::string& name) {
    for (const auto& c : verification["checks"])
      if (c["check"] == name) return c;
    return json::object();
  }

  IntakeLab lab_;
};

// The reproduction: an unknown key, --device-id jetson-07, verified as INTACT with exit 0.
TEST_F(VerdictTest, AnUnknownKeyClaimingADeviceIdIsNotAttributed) {
  IntakeLab::must(IntakeLab::mlfx("keys gen --kind device --out " + (lab_.dir() / "mallory")));
  const std::string b = seal(lab_.dir() / "mallory.key", "jetson-07", "claim");

  auto plain = IntakeLab::mlfx("bundle verify " + b);
  EXPECT_EQ(plain.exit_code, kExitIdentityUnverified) << plain.output;
  EXPECT_NE(plain.output.find("INTACT, IDENTITY UNVERIFIED"), std::string::npos) << plain.output;
  EXPECT_EQ(plain.output.find("INTACT AND ATTRIBUTED"), std::string::npos) << plain.output;
  EXPECT_NE(plain.output.find("device 'jetson-07' (the manifest's claim)"), std::string::npos) << plain.output;

  auto j = parse(IntakeLab::mlfx("bundle verify --json " + b));
  EXPECT_EQ(j["verdict"], "identity_unverified");
  EXPECT_EQ(j["attributed"], false);
  EXPECT_EQ(check(j, "device")["result"], "not run") << j;
  EXPECT_EQ(check(j, "device")["ok"], false) << "a check that did not run is not shown as passed";

  // Against the lab CA, which knows jetson-07 by another key: failed.
  lab_.add_device("jetson-07");
  auto ca = IntakeLab::mlfx("bundle verify -q " + b + " --trusted-devices " + lab_.ca_dir());
  EXPECT_EQ(ca.exit_code, 1) << ca.output;
  EXPECT_NE(ca.output.find("VERIFICATION FAILED"), std::string::npos) << ca.output;
  EXPECT_NE(ca.output.find("is not among the 1 trusted keys"), std::string::npos) << ca.output;
  // Opening and recovering go on with an unattributed bundle but say so; with the CA they refuse.
  auto open = IntakeLab::mlfx("bundle open -q " + b + " --key " + (lab_.dir() / "lab.key") + " --out " + (lab_.dir() / "o"));
  EXPECT_EQ(open.exit_code, 0) << open.output;
  EXPECT_NE(open.output.find("identity unverified"), std::string::npos) << open.output;
  const std::string custody = read_file(lab_.dir() / "o/custody.jsonl");
  EXPECT_NE(custody.find("identity_unverified"), std::string::npos) << "the 'opened' event records the verdict";
  auto refused = IntakeLab::mlfx("bundle open -q " + b + " --key " + (lab_.dir() / "lab.key") + " --out " +
                                 (lab_.dir() / "o2") + " --trusted-devices " + lab_.ca_dir());
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_FALSE(fs::exists(lab_.dir() / "o2"));
}

// A key the lab trusts for car-1 signs a manifest that claims jetson-07: the trust store binds
// keys to device ids, so the claim fails; the device's own id is attributed.
TEST_F(VerdictTest, ATrustedKeyClaimingAnotherDevicesIdFails) {
  const Device car = lab_.add_device("car-1");
  const std::string forged = seal(car.key, "jetson-07", "forged");
  for (const std::string& store : {lab_.ca_dir(), lab_.trusted()}) {
    auto r = IntakeLab::mlfx("bundle verify -q " + forged + " --trusted-devices " + store);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("belongs to device 'car-1'"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("claims device 'jetson-07'"), std::string::npos) << r.output;
  }
  const std::string own = seal(car.key, "car-1", "own");
  for (const std::string& store : {lab_.ca_dir(), lab_.trusted()}) {
    auto r = IntakeLab::mlfx("bundle verify " + own + " --trusted-devices " + store);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("INTACT AND ATTRIBUTED"), std::string::npos) << r.output;
  }
  // A revoked certificate no longer vouches for its key.
  IntakeLab::must(IntakeLab::mlfx("ca revoke --ca " + lab_.ca_dir() + " --cert " + car.cert + " --reason keyCompromise"));
  auto revoked = IntakeLab::mlfx("bundle verify -q " + own + " --trusted-devices " + lab_.ca_dir());
  EXPECT_EQ(revoked.exit_code, 1) << revoked.output;
  EXPECT_NE(revoked.output.find("was revoked"), std::string::npos) << revoked.output;
}

// The report's banner never claims a check that did not run: no scan means no "No backdoor
// flagged", no trust store means no "intact"; both are said not to have been checked.
TEST_F(VerdictTest, TheReportSaysWhatWasNotChecked) {
  const Device car = lab_.add_device("car-1");
  const std::string b = seal(car.key, "car-1", "case");
  IntakeLab::must(IntakeLab::mlfx("report --out " + (lab_.dir() / "r1") + " --bundle " + b));
  const json r1 = json::parse(read_file(lab_.dir() / "r1/report.json"));
  EXPECT_EQ(r1["verdict"]["evidence"], "identity_unverified");
  EXPECT_EQ(r1["verdict"]["backdoor_scan"], "not_run");
  EXPECT_EQ(r1["verdict"]["level"], "caution");
  const std::string page = read_file(lab_.dir() / "r1/report.html");
  EXPECT_EQ(page.find("No backdoor flagged"), std::string::npos);
  EXPECT_EQ(page.find("class=\"clear\""), std::string::npos) << "no green banner";
  EXPECT_NE(page.find("Backdoor scan not run"), std::string::npos);
  EXPECT_NE(page.find("Evidence intact, identity unverified"), std::string::npos);
  EXPECT_NE(page.find("NOT RUN"), std::string::npos) << "the device check is shown as not run";

  IntakeLab::must(IntakeLab::mlfx("report --out " + (lab_.dir() / "r2") + " --bundle " + b + " --trusted-devices " +
                                  lab_.ca_dir()));
  const json r2 = json::parse(read_file(lab_.dir() / "r2/report.json"));
  EXPECT_EQ(r2["verdict"]["evidence"], "attributed");
  EXPECT_EQ(r2["verdict"]["level"], "caution") << "still no scan";
  EXPECT_NE(read_file(lab_.dir() / "r2/report.html").find("Evidence intact and attributed"), std::string::npos);
}

// The custody chain as stored at the lab: the intake's signed 'received' event and receipt are
// in the report and checked by verify; a stored chain edited afterwards fails verification.
TEST_F(VerdictTest, TheWholeStoredCustodyChainIsShownAndChecked) {
  const Device car = lab_.add_device("car-1");
  const std::string b = seal(car.key, "car-1", "shipped");
  lab_.start_server();
  lab_.queue(car, b);
  auto shipped = lab_.ship(car);
  ASSERT_EQ(shipped.exit_code, 0) << shipped.output;
  const std::string object = lab_.object_path(b);
  const std::string stem = object.substr(0, object.size() - 5);
  const std::string stored_log = read_file(stem + ".custody.jsonl");

  auto v = IntakeLab::mlfx("bundle verify --json " + object + " --trusted-devices " + lab_.ca_dir());
  EXPECT_EQ(v.exit_code, 0) << v.output;
  const json vj = parse(v);
  EXPECT_EQ(check(vj, "stored custody")["result"], "passed") << vj;

  IntakeLab::must(IntakeLab::mlfx("report --out " + (lab_.dir() / "r") + " --bundle " + object + " --trusted-devices " +
                                  lab_.ca_dir()));
  const json r = json::parse(read_file(lab_.dir() / "r/report.json"));
  std::vector<std::string> types;
  for (const auto& e : r["evidence"]["custody"]) types.push_back(e["type"]);
  EXPECT_EQ(types, (std::vector<std::string>{"acquired", "sealed", "received"}));
  EXPECT_EQ(r["evidence"]["receipt"]["receipt"]["bundle_digest"], IntakeLab::digest_of(b));
  const std::string page = read_file(lab_.dir() / "r/report.html");
  EXPECT_NE(page.find("Intake receipt"), std::string::npos);
  EXPECT_NE(page.find("received"), std::string::npos);
  EXPECT_EQ(read_file(stem + ".custody.jsonl"), stored_log) << "evidence is never modified";

  // An insider edits the stored chain (the intake's event): verify fails and says where.
  std::string edited = stored_log;
  const size_t at = edited.find("\"received\"");
  ASSERT_NE(at, std::string::npos);
  edited.replace(at, 10, "\"recieved\"");
  fs::permissions(stem + ".custody.jsonl", fs::perms::owner_write, fs::perm_options::add);
  write_file(stem + ".custody.jsonl", edited);
  auto tampered = IntakeLab::mlfx("bundle verify -q " + object + " --trusted-devices " + lab_.ca_dir());
  EXPECT_EQ(tampered.exit_code, 1) << tampered.output;
  EXPECT_NE(tampered.output.find("stored custody"), std::string::npos) << tampered.output;
}

// Names from evidence (case id, note, stream names) cannot drive the terminal: escape
// sequences and bidirectional overrides come out as visible escapes, and JSON output is plain
// ASCII. (Bytes that are not UTF-8 cannot reach a manifest, which is JSON; printable() escapes
// them elsewhere: tests/unit.)
TEST_F(VerdictTest, EvidenceNamesAreEscapedBeforeTheTerminal) {
  const Device car = lab_.add_device("car-1");
  write_file(lab_.dir() / "case.txt", "CASE\x1b]0;owned\x07\x1b[2J\xe2\x80\xaegnp.exe");
  const std::string b = seal(car.key, "car-1", "names", "--case \"$(cat " + (lab_.dir() / "case.txt") + ")\" --note \"$(printf 'a\\rb')\"");
  for (const std::string& cmd : {"bundle info ", "bundle info --json ", "bundle verify --json "}) {
    auto r = IntakeLab::mlfx(cmd + b);
    EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << cmd;
    EXPECT_EQ(r.output.find('\x07'), std::string::npos) << cmd;
    EXPECT_EQ(r.output.find('\r'), std::string::npos) << cmd;
    EXPECT_EQ(r.output.find("\xe2\x80\xae"), std::string::npos) << cmd << ": a right-to-left override";
  }
  auto info = IntakeLab::mlfx("bundle info " + b);
  EXPECT_NE(info.output.find("CASE\\x1b]0;owned\\x07\\x1b[2J\\u{202e}gnp.exe"), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("a\\rb"), std::string::npos) << info.output;
  auto j = IntakeLab::mlfx("bundle info --json " + b);
  for (unsigned char c : j.output) EXPECT_LT(c, 0x80);
  EXPECT_TRUE(json::parse(j.output, nullptr, false).is_object()) << j.output;
}

}  // namespace
}  // namespace mlfx::testing
