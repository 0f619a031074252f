#include "upload/intake_target.h"

#include "mlfx/base/host.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::agent {

Result<IntakeTarget> intake_target(const IntakeSettings& s) {
  IntakeTarget t;
  MLFX_ASSIGN(HostPort hp, parse_host_port(s.server, s.option, false));
  t.host = hp.host;
  t.port = hp.port;
  t.tls = {s.ca, s.cert, s.key, s.crl};
  if (!s.intake_key.empty()) {
    if (s.intake_key.rfind("sha256:", 0) == 0) {
      t.intake_key_fingerprint = s.intake_key;
    } else {
      MLFX_ASSIGN(crypto::PublicKeyFile pub, crypto::load_public_key_file(s.intake_key));
      if (!pub.verify) return fail(Errc::kInvalidArgument, s.intake_key + " holds no signing key");
      t.intake_key_fingerprint = pub.verify->fingerprint();
    }
  }
  t.bandwidth = s.bandwidth;
  t.timeout = s.timeout;
  return t;
}

}  // namespace mlfx::agent
