// mlfx ca: certificates checked independently with the stock openssl CLI, and real mutual
// TLS 1.3 handshakes between `openssl s_server` and `openssl s_client` on loopback.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pki/lab_ca.h"
#include "test_util.h"

namespace mlfx {
namespace {

using testing::CommandResult;
using testing::read_file;
using testing::run;
using testing::TempDir;

// gmock is not part of the build: substring checks that print the haystack on failure.
#define EXPECT_CONTAINS(hay, needle) \
  EXPECT_NE(std::string(hay).find(needle), std::string::npos) << "missing '" << (needle) << "' in:\n" << (hay)
#define EXPECT_LACKS(hay, needle) \
  EXPECT_EQ(std::string(hay).find(needle), std::string::npos) << "unexpected '" << (needle) << "' in:\n" << (hay)

CommandResult mlfx(const std::string& args) { return run(testing::mlfx_bin() + " " + args); }

// The fingerprint of a .pub or certificate as openssl computes it: SHA-256 of the SPKI DER.
std::string openssl_fingerprint(const std::string& pubkey_cmd) {
  auto r = run(pubkey_cmd + " | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return "sha256:" + r.output.substr(0, 64);
}

// A CA with one device and one intake certificate, all made through the CLI.
class LabCaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = dir_ / "ca";
    auto r = mlfx("ca init --out " + ca_ + " --name 'test lab CA'");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_EQ(mlfx("keys gen --kind device --out " + (dir_ / "dev")).exit_code, 0);
    ASSERT_EQ(mlfx("keys gen --kind device --out " + (dir_ / "intake")).exit_code, 0);
    r = mlfx("ca issue --ca " + ca_ + " --device " + (dir_ / "dev.pub") + " --id dev-1 --out " +
             (dir_ / "dev.pem"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = mlfx("ca issue --ca " + ca_ + " --server --key " + (dir_ / "intake.pub") +
             " --name localhost,127.0.0.1 --out " + (dir_ / "server.pem"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  std::string ca_pem() const { return ca_ + "/ca.pem"; }
  std::string crl_pem() const { return ca_ + "/crl.pem"; }

  CommandResult verify(const std::string& cert, bool crl) {
    return run("openssl verify " + std::string(crl ? "-crl_check -CRLfile " + crl_pem() + " " : "") +
               "-CAfile " + ca_pem() + " " + cert);
  }

  TempDir dir_;
  std::string ca_;
};

TEST_F(LabCaTest, InitWritesKeyCertificateCrlAndIndex) {
  struct stat st;
  ASSERT_EQ(stat((ca_ + "/ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto r = run("openssl x509 -noout -subject -ext basicConstraints,keyUsage,subjectKeyIdentifier -in " +
               ca_pem());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "CN = test lab CA");
  EXPECT_CONTAINS(r.output, "X509v3 Basic Constraints: critical");
  EXPECT_CONTAINS(r.output, "CA:TRUE");
  EXPECT_CONTAINS(r.output, "X509v3 Key Usage: critical");
  EXPECT_CONTAINS(r.output, "Certificate Sign, CRL Sign");
  EXPECT_CONTAINS(r.output, "Subject Key Identifier");
  // The CA key is Ed25519, read by stock openssl.
  r = run("openssl pkey -noout -text -in " + ca_ + "/ca.key");
  EXPECT_CONTAINS(r.output, "ED25519");
  // The fresh CRL is signed by the CA and number 1.
  r = run("openssl crl -noout -crlnumber -CAfile " + ca_pem() + " -in " + crl_pem());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "verify OK");
  EXPECT_CONTAINS(r.output, "crlNumber=0x01");
}

TEST_F(LabCaTest, InitRefusesNonEmptyDirectory) {
  auto r = mlfx("ca init --out " + ca_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "not empty");
  // An empty existing directory is fine.
  ASSERT_EQ(mkdir((dir_ / "empty").c_str(), 0700), 0);
  r = mlfx("ca init --out " + (dir_ / "empty"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(LabCaTest, DeviceCertificateVerifiesAndCarriesTheDeviceKey) {
  auto r = verify(dir_ / "dev.pem", false);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, ": OK");
  r = run("openssl x509 -noout -subject -ext subjectAltName,extendedKeyUsage,keyUsage,"
          "authorityKeyIdentifier,subjectKeyIdentifier -in " + (dir_ / "dev.pem"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "CN = dev-1");
  EXPECT_CONTAINS(r.output, "URI:mlfx:device:dev-1");
  EXPECT_CONTAINS(r.output, "TLS Web Client Authentication");
  EXPECT_LACKS(r.output, "TLS Web Server Authentication");
  EXPECT_CONTAINS(r.output, "Digital Signature");
  EXPECT_CONTAINS(r.output, "Authority Key Identifier");
  EXPECT_CONTAINS(r.output, "Subject Key Identifier");

  // TLS identity == manifest device.key_fingerprint, computed three independent ways.
  const std::string from_pub = openssl_fingerprint("cat " + (dir_ / "dev.pub"));
  const std::string from_cert = openssl_fingerprint("openssl x509 -noout -pubkey -in " + (dir_ / "dev.pem"));
  EXPECT_EQ(from_pub, from_cert);
  auto fp = pki::certificate_key_fingerprint(read_file(dir_ / "dev.pem"));
  ASSERT_TRUE(fp) << fp.error().to_string();
  EXPECT_EQ(*fp, from_pub);

  // A 16-byte positive serial, recorded in the index.
  r = run("openssl x509 -noout -serial -in " + (dir_ / "dev.pem"));
  ASSERT_EQ(r.output.rfind("serial=", 0), 0u) << r.output;
  std::string serial = r.output.substr(7, 32);
  EXPECT_EQ(r.output.size(), 7u + 32u + 1u) << r.output;
  auto list = pki::list_certificates(ca_);
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 2u);
  std::string lower = serial;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_EQ((*list)[0].serial, lower);
  EXPECT_EQ((*list)[0].id, "dev-1");
  EXPECT_EQ((*list)[0].key_fingerprint, from_pub);
  EXPECT_FALSE((*list)[0].revoked_utc);
}

TEST_F(LabCaTest, ServerCertificateHasDnsAndIpNames) {
  EXPECT_EQ(verify(dir_ / "server.pem", false).exit_code, 0);
  auto r = run("openssl x509 -noout -subject -ext subjectAltName,extendedKeyUsage -in " + (dir_ / "server.pem"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "CN = localhost");
  EXPECT_CONTAINS(r.output, "DNS:localhost, IP Address:127.0.0.1");
  EXPECT_CONTAINS(r.output, "TLS Web Server Authentication");
  EXPECT_LACKS(r.output, "TLS Web Client Authentication");
  EXPECT_EQ(openssl_fingerprint("cat " + (dir_ / "intake.pub")),
            openssl_fingerprint("openssl x509 -noout -pubkey -in " + (dir_ / "server.pem")));
}

TEST_F(LabCaTest, RevokeUpdatesCrlAndIndex) {
  ASSERT_EQ(verify(dir_ / "dev.pem", true).exit_code, 0);
  auto r = mlfx("ca revoke --ca " + ca_ + " --cert " + (dir_ / "dev.pem") + " --reason keyCompromise");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = verify(dir_ / "dev.pem", true);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.output, "certificate revoked");
  // Without the CRL it still chains; an unrelated certificate still passes with it.
  EXPECT_EQ(verify(dir_ / "dev.pem", false).exit_code, 0);
  r = verify(dir_ / "server.pem", true);
  EXPECT_EQ(r.exit_code, 0) << r.output;

  r = run("openssl crl -noout -text -CAfile " + ca_pem() + " -in " + crl_pem());
  EXPECT_CONTAINS(r.output, "verify OK");
  EXPECT_CONTAINS(r.output, "X509v3 CRL Number: \n                2");
  EXPECT_CONTAINS(r.output, "Key Compromise");
  EXPECT_CONTAINS(r.output, "Next Update");

  auto list = mlfx("ca list --ca " + ca_ + " --json");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  auto j = nlohmann::json::parse(list.output, nullptr, false);
  ASSERT_TRUE(j.is_array()) << list.output;
  ASSERT_EQ(j.size(), 2u);
  EXPECT_TRUE(j[0]["revoked_utc"].is_string());
  EXPECT_EQ(j[0]["reason"], "keyCompromise");
  EXPECT_TRUE(j[1]["revoked_utc"].is_null());
  EXPECT_EQ(j[1]["kind"], "server");

  // Twice is an error that says so; the CRL is left as it was.
  const std::string crl_before = read_file(crl_pem());
  r = mlfx("ca revoke --ca " + ca_ + " --serial " + j[0]["serial"].get<std::string>());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "already revoked");
  EXPECT_EQ(read_file(crl_pem()), crl_before);

  // By serial, in openssl's spelling (upper case).
  r = run("openssl x509 -noout -serial -in " + (dir_ / "server.pem"));
  const std::string serial = r.output.substr(7, 32);
  r = mlfx("ca revoke --ca " + ca_ + " --serial " + serial);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(verify(dir_ / "server.pem", true).output, "certificate revoked");
  EXPECT_CONTAINS(run("openssl crl -noout -crlnumber -in " + crl_pem()).output, "crlNumber=0x03");
}

TEST_F(LabCaTest, BadInputGivesClearErrors) {
  // A lab key is not a certificate key.
  ASSERT_EQ(mlfx("keys gen --kind lab --out " + (dir_ / "lab")).exit_code, 0);
  auto r = mlfx("ca issue --ca " + ca_ + " --device " + (dir_ / "lab.pub") + " --id x --out " + (dir_ / "x.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "is a lab key");
  // A private key is not a .pub.
  r = mlfx("ca issue --ca " + ca_ + " --device " + (dir_ / "dev.key") + " --id x --out " + (dir_ / "x.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "not an mlfx public key file");
  // Bad ids and names.
  r = mlfx("ca issue --ca " + ca_ + " --device " + (dir_ / "dev.pub") + " --id 'a,b' --out " + (dir_ / "x.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "device id");
  r = mlfx("ca issue --ca " + ca_ + " --server --key " + (dir_ / "intake.pub") + " --name 'a b' --out " +
           (dir_ / "x.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "neither a DNS name nor an IP address");
  // Missing CA directory.
  r = mlfx("ca issue --ca " + (dir_ / "nope") + " --device " + (dir_ / "dev.pub") + " --id x --out " + (dir_ / "x.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "mlfx ca init");
  r = mlfx("ca list --ca " + (dir_ / "nope"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "mlfx ca init");
  // Existing output.
  r = mlfx("ca issue --ca " + ca_ + " --device " + (dir_ / "dev.pub") + " --id x --out " + (dir_ / "dev.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "already exists");
  // Unknown serial, and a certificate of another CA.
  r = mlfx("ca revoke --ca " + ca_ + " --serial 1234abcd");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "not in");
  ASSERT_EQ(mlfx("ca init --out " + (dir_ / "other")).exit_code, 0);
  r = mlfx("ca revoke --ca " + (dir_ / "other") + " --cert " + (dir_ / "dev.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "not issued by the CA");
  // A CA key readable by others is refused, like every mlfx private key.
  ASSERT_EQ(chmod((ca_ + "/ca.key").c_str(), 0644), 0);
  r = mlfx("ca issue --ca " + ca_ + " --device " + (dir_ / "dev.pub") + " --id x --out " + (dir_ / "x.pem"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.output, "chmod 600");
  EXPECT_FALSE(testing::fs::exists(dir_ / "x.pem"));
  // Usage errors.
  EXPECT_EQ(mlfx("ca issue --ca " + ca_ + " --out " + (dir_ / "x.pem")).exit_code, 2);
  EXPECT_EQ(mlfx("ca issue --ca " + ca_ + " --device " + (dir_ / "dev.pub") + " --out " + (dir_ / "x.pem")).exit_code, 2);
  EXPECT_EQ(mlfx("ca issue --ca " + ca_ + " --server --key k --out " + (dir_ / "x.pem")).exit_code, 2);
  EXPECT_EQ(mlfx("ca issue --ca " + ca_ + " --device d --id x --server --key k --name n --out o").exit_code, 2);
  EXPECT_EQ(mlfx("ca revoke --ca " + ca_).exit_code, 2);
  EXPECT_EQ(mlfx("ca init --out " + (dir_ / "z") + " --days 0").exit_code, 2);
}

TEST(CertificateKeyFingerprint, RejectsGarbage) {
  auto fp = pki::certificate_key_fingerprint("not a certificate");
  ASSERT_FALSE(fp);
  EXPECT_CONTAINS(fp.error().to_string(), "not a PEM certificate");
}

// ---- mutual TLS 1.3 on loopback ----

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

bool port_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// `openssl s_server -rev` (echoes each line reversed) requiring a client certificate; killed
// with its process group when the object goes.
class TlsServer {
 public:
  TlsServer(const std::string& args, const std::string& log) {
    for (int attempt = 0; attempt < 5 && port_ < 0; ++attempt) {
      int port = free_port();
      pid_ = fork();
      if (pid_ == 0) {
        setpgid(0, 0);
        std::string cmd = "exec openssl s_server -rev -tls1_3 -accept 127.0.0.1:" + std::to_string(port) +
                          " -Verify 1 -verify_return_error " + args + " >" + log + " 2>&1 </dev/null";
        execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
        _exit(127);
      }
      for (int i = 0; i < 100; ++i) {
        if (port_open(port)) {
          port_ = port;
          break;
        }
        if (waitpid(pid_, nullptr, WNOHANG) == pid_) {  // exited: port taken, try another
          pid_ = -1;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (port_ < 0) stop();
    }
  }
  ~TlsServer() { stop(); }
  int port() const { return port_; }

 private:
  void stop() {
    if (pid_ > 0) {
      kill(-pid_, SIGKILL);
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }
  pid_t pid_ = -1;
  int port_ = -1;
};

class MutualTlsTest : public LabCaTest {
 protected:
  // True when the client got its line echoed back: the handshake completed and the server
  // accepted its certificate.
  bool handshake(const std::string& server_args, const std::string& cert, const std::string& key,
                 std::string* server_log) {
    const std::string log = dir_ / ("server-" + std::to_string(++count_) + ".log");
    bool echoed = false;
    {
      TlsServer server("-CAfile " + ca_pem() + " -cert " + (dir_ / "server.pem") + " -key " +
                           (dir_ / "intake.key") + " " + server_args,
                       log);
      EXPECT_GT(server.port(), 0) << read_file(log);
      if (server.port() <= 0) return false;
      auto r = run("(echo mlfx-hello; sleep 1) | timeout 20 openssl s_client -tls1_3 -connect 127.0.0.1:" +
                   std::to_string(server.port()) + " -verify_return_error -verify_ip 127.0.0.1 -CAfile " +
                   ca_pem() + " -cert " + cert + " -key " + key);
      echoed = r.output.find("olleh-xflm") != std::string::npos;
      client_output_ = r.output;
    }
    *server_log = read_file(log);
    return echoed;
  }

  std::string client_output_;
  int count_ = 0;
};

TEST_F(MutualTlsTest, DeviceKeyAuthenticates) {
  std::string log;
  EXPECT_TRUE(handshake("", dir_ / "dev.pem", dir_ / "dev.key", &log)) << client_output_ << "\nserver:\n" << log;
  EXPECT_CONTAINS(client_output_, "TLSv1.3");
  // With the CRL checked too (nothing revoked yet).
  EXPECT_TRUE(handshake("-crl_check -CRL " + crl_pem(), dir_ / "dev.pem", dir_ / "dev.key", &log))
      << client_output_ << "\nserver:\n" << log;
}

TEST_F(MutualTlsTest, RevokedDeviceIsRefused) {
  ASSERT_EQ(mlfx("ca revoke --ca " + ca_ + " --cert " + (dir_ / "dev.pem")).exit_code, 0);
  std::string log;
  EXPECT_FALSE(handshake("-crl_check -CRL " + crl_pem(), dir_ / "dev.pem", dir_ / "dev.key", &log))
      << client_output_;
  EXPECT_CONTAINS(log, "certificate revoked");
}

TEST_F(MutualTlsTest, CertificateFromAnotherCaIsRefused) {
  ASSERT_EQ(mlfx("ca init --out " + (dir_ / "other")).exit_code, 0);
  auto r = mlfx("ca issue --ca " + (dir_ / "other") + " --device " + (dir_ / "dev.pub") + " --id dev-1 --out " +
                (dir_ / "other-dev.pem"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string log;
  EXPECT_FALSE(handshake("", dir_ / "other-dev.pem", dir_ / "dev.key", &log)) << client_output_;
  EXPECT_CONTAINS(log, "unable to get local issuer certificate");
}

TEST_F(MutualTlsTest, ExpiredCertificateIsRefused) {
  pki::IssueOptions o;
  o.kind = pki::CertKind::kDevice;
  o.public_key_path = dir_ / "dev.pub";
  o.id = "dev-1";
  o.days = 1;
  o.not_before = static_cast<int64_t>(time(nullptr)) - 3 * 86400;  // expired yesterday
  o.out = dir_ / "expired.pem";
  auto e = pki::issue_certificate(ca_, o);
  ASSERT_TRUE(e) << e.error().to_string();
  EXPECT_CONTAINS(verify(o.out, false).output, "certificate has expired");
  std::string log;
  EXPECT_FALSE(handshake("", o.out, dir_ / "dev.key", &log)) << client_output_;
  EXPECT_CONTAINS(log, "certificate has expired");
}

TEST_F(MutualTlsTest, ClientWithoutCertificateIsRefused) {
  const std::string out = dir_ / "x.log";
  // No -cert at all: the server demands one (-Verify) and fails the handshake.
  TlsServer server("-CAfile " + ca_pem() + " -cert " + (dir_ / "server.pem") + " -key " + (dir_ / "intake.key"),
                   out);
  ASSERT_GT(server.port(), 0);
  auto r = run("(echo mlfx-hello; sleep 1) | timeout 20 openssl s_client -tls1_3 -connect 127.0.0.1:" +
               std::to_string(server.port()) + " -CAfile " + ca_pem());
  EXPECT_LACKS(r.output, "olleh-xflm");
}

}  // namespace
}  // namespace mlfx
