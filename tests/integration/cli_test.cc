// The mlfx command line, run as a user would: keys, seal, verify, open, info, and bad input.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "mlfx/base/json.h"
#include "mlfx/custody/custody_log.h"
#include "test_util.h"

namespace mlfx {
namespace {

using testing::run;

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(mlfx("keys gen --kind device --out " + (dir / "dev")).exit_code, 0);
    ASSERT_EQ(mlfx("keys gen --kind lab --out " + (dir / "lab")).exit_code, 0);
    testing::write_file(dir / "image.bin", testing::random_string(3 * 1024 * 1024 + 5, 11));
    testing::write_file(dir / "notes.txt", "operator notes\n");
  }
  testing::CommandResult mlfx(const std::string& args) {
    return run(testing::mlfx_bin() + " " + args);
  }
  std::string seal_cmd(const std::string& out) {
    return "bundle seal " + (dir / "image.bin") + " " + (dir / "notes.txt") + " --out " + out +
           " --device-key " + (dir / "dev.key") + " --device-id car-7 --recipient " + (dir / "lab.pub") +
           " --case CASE-7 --note 'seized at checkpoint' --quiet";
  }
  testing::TempDir dir;
};

TEST_F(Cli, HelpAndVersion) {
  auto h = mlfx("--help");
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.output.find("bundle"), std::string::npos);
  EXPECT_EQ(mlfx("bundle seal --help").exit_code, 0);
  EXPECT_NE(mlfx("--version").output.find("mlfx 0."), std::string::npos);
  EXPECT_EQ(mlfx("bundle frobnicate").exit_code, 2);
  EXPECT_EQ(mlfx("keys gen --kind nonsense --out x").exit_code, 2);
}

// mlfx alone (no mlfx-torch, no mlfx-agent beside it): the commands that need them say what
// is missing and where it was looked for, instead of failing obscurely or using a program
// found through PATH.
TEST_F(Cli, CommandsRunByCompanionProgramsSayWhenTheyAreMissing) {
  const std::string lone = dir / "bin";
  ASSERT_EQ(run("mkdir " + lone + " && cp " + testing::mlfx_bin() + " " + lone + "/mlfx").exit_code, 0);
  auto rehost = run(lone + "/mlfx rehost " + dir.path() + " --out " + (dir / "rh"));
  EXPECT_EQ(rehost.exit_code, 1);
  EXPECT_NE(rehost.output.find("mlfx-torch is not installed"), std::string::npos) << rehost.output;
  EXPECT_NE(rehost.output.find("libexec/mlfx"), std::string::npos) << rehost.output;
  auto scan = run("PATH=" + std::string(getenv("MLFX_BIN") ? getenv("MLFX_BIN") : ".") + ":$PATH " + lone +
                  "/mlfx scan weight-diff " + (dir / "notes.txt") + " --baseline " + (dir / "notes.txt") + " --out " + (dir / "wd"));
  EXPECT_EQ(scan.exit_code, 1) << scan.output;
  EXPECT_NE(scan.output.find("mlfx-torch is not installed"), std::string::npos) << scan.output;
  auto live = run(lone + "/mlfx recover --pid 1 --out " + (dir / "rec"));
  EXPECT_EQ(live.exit_code, 1);
  EXPECT_NE(live.output.find("mlfx-agent is not installed"), std::string::npos) << live.output;
  // Usage errors are found by mlfx itself, without the companion.
  EXPECT_EQ(run(lone + "/mlfx rehost").exit_code, 2);
  EXPECT_EQ(run(lone + "/mlfx rehost --help").exit_code, 0);
}

TEST_F(Cli, KeysGenRefusesOverwriteAndPrintsNoSecrets) {
  auto gen = mlfx("keys gen --kind lab --out " + (dir / "lab2"));
  EXPECT_EQ(gen.exit_code, 0);
  EXPECT_EQ(gen.output.find("PRIVATE"), std::string::npos);
  std::string key = testing::read_file(dir / "lab2.key");
  auto again = mlfx("keys gen --kind device --out " + (dir / "lab2"));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.output.find("refusing to overwrite"), std::string::npos) << again.output;
  EXPECT_EQ(testing::read_file(dir / "lab2.key"), key);
  struct stat st;
  ASSERT_EQ(stat((dir / "lab2.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(Cli, SealVerifyOpenRoundTrip) {
  const std::string b = dir / "case.mlfx";
  auto s = mlfx(seal_cmd(b));
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_EQ(s.output.find("PRIVATE"), std::string::npos);
  // Intact, but nobody vouches for the signer: exit 5 and said so.
  auto v = mlfx("bundle verify " + b);
  EXPECT_EQ(v.exit_code, 5) << v.output;
  EXPECT_NE(v.output.find("INTACT, IDENTITY UNVERIFIED"), std::string::npos) << v.output;

  std::string before = testing::read_file(b);
  auto o = mlfx("bundle open " + b + " --key " + (dir / "lab.key") + " --out " + (dir / "out") + " --quiet");
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(testing::read_file(b), before) << "open modified the evidence";
  EXPECT_EQ(testing::read_file(dir / "out/image.bin"), testing::read_file(dir / "image.bin"));
  EXPECT_EQ(testing::read_file(dir / "out/notes.txt"), "operator notes\n");
  auto sums = run("cd " + (dir / "out") + " && sha256sum -c SHA256SUMS");
  EXPECT_EQ(sums.exit_code, 0) << sums.output;
  EXPECT_NE(sums.output.find("image.bin: OK"), std::string::npos);
  // The manifest signature re-verifies with stock OpenSSL from the opened files.
  auto m = json::parse(testing::read_file(dir / "out/manifest.json"), "manifest");
  ASSERT_TRUE(m);
  EXPECT_EQ((*m)["case_id"], "CASE-7");
  EXPECT_EQ((*m)["note"], "seized at checkpoint");
  auto osl = run("(printf 'mlfx-bundle-v1 manifest\\n'; cat " + (dir / "out/manifest.json") +
                 ") > " + (dir / "signed.bin") + " && openssl pkeyutl -verify -pubin -inkey " +
                 (dir / "dev.pub") + " -rawin -in " + (dir / "signed.bin") + " -sigfile " +
                 (dir / "out/manifest.sig"));
  EXPECT_EQ(osl.exit_code, 0) << osl.output;
  // The custody log gained a verified 'opened' event signed by the lab.
  auto log = custody::CustodyLog::parse(testing::read_file(dir / "out/custody.jsonl"), (*m)["bundle_id"]);
  ASSERT_TRUE(log);
  auto chain = log->verify();
  ASSERT_TRUE(chain) << chain.error().to_string();
  EXPECT_EQ(chain->types, (std::vector<std::string>{"acquired", "sealed", "opened"}));
  // Signed by the lab's Ed25519 key, not the device's.
  EXPECT_NE(chain->fingerprints[2], chain->fingerprints[0]);
}

TEST_F(Cli, SealFromStdinWithLegacyHashes) {
  const std::string b = dir / "pipe.mlfx";
  auto s = run("head -c 5000000 /dev/zero | " + testing::mlfx_bin() + " bundle seal - --name memory --out " + b +
               " --device-key " + (dir / "dev.key") + " --recipient " + (dir / "lab.pub") + " --legacy-hashes");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  auto info = mlfx("bundle info --json " + b);
  ASSERT_EQ(info.exit_code, 0) << info.output;
  auto j = json::parse(info.output, "info");
  ASSERT_TRUE(j) << info.output;
  const auto& st = (*j)["manifest"]["streams"][0];
  EXPECT_EQ(st["name"], "memory");
  EXPECT_EQ(st["size"], 5000000u);
  EXPECT_EQ(st["sha256"], run("head -c 5000000 /dev/zero | sha256sum").output.substr(0, 64));
  EXPECT_EQ(st["md5"], run("head -c 5000000 /dev/zero | md5sum").output.substr(0, 32));
  EXPECT_EQ(st["sha1"], run("head -c 5000000 /dev/zero | sha1sum").output.substr(0, 40));
  EXPECT_EQ(mlfx("bundle verify -q " + b).exit_code, 5);
}

TEST_F(Cli, TrustedDevices) {
  const std::string b = dir / "case.mlfx";
  ASSERT_EQ(mlfx(seal_cmd(b)).exit_code, 0);
  // The trust store binds the key to the device id by the file's name: <device-id>.pub.
  run("mkdir -p " + (dir / "trusted") + " && cp " + (dir / "dev.pub") + " " + (dir / "trusted/car-7.pub"));
  auto attributed = mlfx("bundle verify " + b + " --trusted-devices " + (dir / "trusted"));
  EXPECT_EQ(attributed.exit_code, 0) << attributed.output;
  EXPECT_NE(attributed.output.find("INTACT AND ATTRIBUTED"), std::string::npos) << attributed.output;
  // The same key filed under another device's id: the manifest's claim is refused.
  run("mkdir -p " + (dir / "elsewhere") + " && cp " + (dir / "dev.pub") + " " + (dir / "elsewhere/car-8.pub"));
  auto other_id = mlfx("bundle verify -q " + b + " --trusted-devices " + (dir / "elsewhere"));
  EXPECT_EQ(other_id.exit_code, 1) << other_id.output;
  EXPECT_NE(other_id.output.find("belongs to device 'car-8'"), std::string::npos) << other_id.output;
  ASSERT_EQ(mlfx("keys gen --kind device --out " + (dir / "other")).exit_code, 0);
  run("mkdir -p " + (dir / "strangers") + " && cp " + (dir / "other.pub") + " " + (dir / "strangers/"));
  auto v = mlfx("bundle verify -q " + b + " --trusted-devices " + (dir / "strangers"));
  EXPECT_EQ(v.exit_code, 1);
  EXPECT_NE(v.output.find("not among the 1 trusted keys"), std::string::npos) << v.output;
  // A lab key does not belong among trusted devices.
  run("cp " + (dir / "lab.pub") + " " + (dir / "trusted/"));
  auto lab = mlfx("bundle verify -q " + b + " --trusted-devices " + (dir / "trusted"));
  EXPECT_EQ(lab.exit_code, 1);
  EXPECT_NE(lab.output.find("is a lab key, not a device key"), std::string::npos) << lab.output;
  auto j = mlfx("bundle verify --json " + b + " --trusted-devices " + (dir / "strangers"));
  auto parsed = json::parse(j.output, "verify json");
  ASSERT_TRUE(parsed) << j.output;
  EXPECT_EQ((*parsed)["intact"], false);
}

TEST_F(Cli, WrongKeysAreRefusedWithoutOutput) {
  const std::string b = dir / "case.mlfx";
  ASSERT_EQ(mlfx(seal_cmd(b)).exit_code, 0);
  ASSERT_EQ(mlfx("keys gen --kind lab --out " + (dir / "otherlab")).exit_code, 0);
  auto o = mlfx("bundle open " + b + " --key " + (dir / "otherlab.key") + " --out " + (dir / "o1"));
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.output.find("not encrypted to lab key"), std::string::npos) << o.output;
  EXPECT_FALSE(testing::fs::exists(dir / "o1"));
  auto d = mlfx("bundle open " + b + " --key " + (dir / "dev.key") + " --out " + (dir / "o2"));
  EXPECT_EQ(d.exit_code, 1);
  EXPECT_NE(d.output.find("lab key is needed"), std::string::npos) << d.output;
  EXPECT_FALSE(testing::fs::exists(dir / "o2"));
  auto missing = mlfx("bundle open " + b + " --key " + (dir / "nope.key") + " --out " + (dir / "o3"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("nope.key"), std::string::npos);
  // Sealing with a lab key as device key, or to a device key as recipient, is refused.
  auto s1 = mlfx("bundle seal " + (dir / "notes.txt") + " --out " + (dir / "x.mlfx") + " --device-key " +
                 (dir / "lab.key") + " --recipient " + (dir / "lab.pub"));
  EXPECT_EQ(s1.exit_code, 1);
  EXPECT_NE(s1.output.find("is a lab key"), std::string::npos) << s1.output;
  auto s2 = mlfx("bundle seal " + (dir / "notes.txt") + " --out " + (dir / "x.mlfx") + " --device-key " +
                 (dir / "dev.key") + " --recipient " + (dir / "dev.pub"));
  EXPECT_EQ(s2.exit_code, 1);
  EXPECT_NE(s2.output.find("is a device key"), std::string::npos) << s2.output;
  EXPECT_FALSE(testing::fs::exists(dir / "x.mlfx"));
}

TEST_F(Cli, SealRefusesToOverwriteAndCleansUpOnBadInput) {
  const std::string b = dir / "case.mlfx";
  testing::write_file(b, "precious");
  auto s = mlfx(seal_cmd(b));
  EXPECT_EQ(s.exit_code, 1);
  EXPECT_EQ(testing::read_file(b), "precious");
  auto m = mlfx("bundle seal " + (dir / "missing.bin") + " --out " + (dir / "y.mlfx") + " --device-key " +
                (dir / "dev.key") + " --recipient " + (dir / "lab.pub"));
  EXPECT_EQ(m.exit_code, 1);
  EXPECT_NE(m.output.find("missing.bin"), std::string::npos);
  EXPECT_FALSE(testing::fs::exists(dir / "y.mlfx"));
  // A directory as input fails mid-seal; the incomplete bundle is removed.
  auto d = mlfx("bundle seal " + (dir / "notes.txt") + " " + dir.path() + " --out " + (dir / "z.mlfx") +
                " --device-key " + (dir / "dev.key") + " --recipient " + (dir / "lab.pub"));
  EXPECT_EQ(d.exit_code, 1);
  EXPECT_FALSE(testing::fs::exists(dir / "z.mlfx"));
}

TEST_F(Cli, GarbageEmptyAndTamperedFilesNameWhatFailed) {
  testing::write_file(dir / "empty.mlfx", "");
  auto e = mlfx("bundle verify -q " + (dir / "empty.mlfx"));
  EXPECT_EQ(e.exit_code, 1);
  EXPECT_NE(e.output.find("is empty"), std::string::npos) << e.output;
  testing::write_file(dir / "garbage.mlfx", testing::random_string(10000, 3));
  auto g = mlfx("bundle verify -q " + (dir / "garbage.mlfx"));
  EXPECT_EQ(g.exit_code, 1);
  EXPECT_NE(g.output.find("not an mlfx bundle"), std::string::npos) << g.output;
  EXPECT_EQ(mlfx("bundle info " + (dir / "garbage.mlfx")).exit_code, 1);
  EXPECT_EQ(mlfx("bundle open " + (dir / "garbage.mlfx") + " --key " + (dir / "lab.key") + " --out " + (dir / "g")).exit_code, 1);
  EXPECT_FALSE(testing::fs::exists(dir / "g"));

  // Flip one bit in the middle of the first chunk of image.bin: verify names stream and chunk.
  const std::string b = dir / "case.mlfx";
  ASSERT_EQ(mlfx(seal_cmd(b)).exit_code, 0);
  std::string bytes = testing::read_file(b);
  bytes[64 + 32 + 1000] ^= 0x04;
  testing::write_file(dir / "flipped.mlfx", bytes);
  auto v = mlfx("bundle verify -q " + (dir / "flipped.mlfx"));
  EXPECT_EQ(v.exit_code, 1);
  EXPECT_NE(v.output.find("stream image.bin, chunk 0"), std::string::npos) << v.output;
  auto o = mlfx("bundle open -q " + (dir / "flipped.mlfx") + " --key " + (dir / "lab.key") + " --out " + (dir / "f"));
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_NE(o.output.find("stream image.bin, chunk 0"), std::string::npos) << o.output;
  EXPECT_FALSE(testing::fs::exists(dir / "f"));
  // A non-empty output directory is refused before anything is written.
  run("mkdir -p " + (dir / "busy") + " && touch " + (dir / "busy/x"));
  auto busy = mlfx("bundle open -q " + b + " --key " + (dir / "lab.key") + " --out " + (dir / "busy"));
  EXPECT_EQ(busy.exit_code, 1);
  EXPECT_NE(busy.output.find("not empty"), std::string::npos);
  EXPECT_EQ(testing::list_dir(dir / "busy").size(), 1u);
}

}  // namespace
}  // namespace mlfx
