// The agent against a revoked intake (issue 11, item 2): `mlfx-agent ship --crl` checks the
// intake's certificate against the lab CA's CRL and refuses a revoked one with a message that
// says so; without --crl the agent still ships, and every upload says the CRL was not checked
// (never a silent green).
#include "adversarial/intake/hostile_peers.h"  // first: it includes <utility> before any asio header

namespace mlfx::testing {
namespace {

using nlohmann::json;

TEST(AgentCrlTest, ARevokedIntakeCertificateIsRefused) {
  IntakeLab lab;
  const Device car = lab.add_device("car-1");
  lab.start_server();
  const std::string crl = lab.ca_dir() + "/crl.pem";

  // Not revoked: with --crl it is checked, without it the agent says it was not.
  lab.queue(car, lab.seal(car, 100000, 65536, 1));
  auto r = lab.ship(car, "--once --crl " + crl);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = IntakeLab::outcomes(r.output);
  ASSERT_EQ(out.size(), 1u) << r.output;
  EXPECT_EQ(out[0]["intake_crl"], "checked") << out[0];
  lab.queue(car, lab.seal(car, 100000, 65536, 2));
  r = lab.ship(car, "--once");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  out = IntakeLab::outcomes(r.output);
  ASSERT_EQ(out.size(), 1u) << r.output;
  EXPECT_EQ(out[0]["intake_crl"], "not checked") << out[0];
  EXPECT_NE(r.output.find("CRL not checked"), std::string::npos) << r.output;

  // The lab CA revokes the intake's certificate (say its key leaked): the agent refuses it.
  IntakeLab::must(IntakeLab::mlfx("ca revoke --ca " + lab.ca_dir() + " --cert " + lab.dir() / "intake.pem"));
  const std::string bundle = lab.seal(car, 100000, 65536, 3);
  lab.queue(car, bundle);
  r = lab.ship(car, "--once --crl " + crl);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("revoked"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(lab.object_path(bundle))) << "nothing was sent to it";
  json st = lab.status(car);
  ASSERT_EQ(st["queue"].size(), 1u) << "the bundle stays queued";
  EXPECT_NE(st["queue"][0]["last_error"].get<std::string>().find("revoked"), std::string::npos) << st;
  EXPECT_TRUE(lab.events("connected").size() == 2) << "no session with the refusing agent";
}

}  // namespace
}  // namespace mlfx::testing
