#include "mlfx/base/host.h"

#include <cstdlib>

#include <pwd.h>
#include <unistd.h>

#include <fstream>

namespace mlfx {

HostIdentity local_host_identity() {
  HostIdentity h;
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) == 0) h.hostname = name;
  std::ifstream mid("/etc/machine-id");
  std::getline(mid, h.machine_id);
  h.uid = getuid();
  passwd pw{}, *res = nullptr;
  char buf[1024];
  if (getpwuid_r(h.uid, &pw, buf, sizeof buf, &res) == 0 && res) h.user = res->pw_name;
  else h.user = "uid " + std::to_string(h.uid);
  return h;
}

Result<HostPort> parse_host_port(const std::string& text, const std::string& option, bool allow_any_port) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    return fail(Errc::kInvalidArgument, option + " wants HOST:PORT, e.g. 127.0.0.1:7443, not '" + text + "'");
  HostPort hp;
  hp.host = text.substr(0, colon);
  if (hp.host.size() > 2 && hp.host.front() == '[' && hp.host.back() == ']') hp.host = hp.host.substr(1, hp.host.size() - 2);
  char* end = nullptr;
  const unsigned long port = std::strtoul(text.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port > 65535 || (port == 0 && !allow_any_port))
    return fail(Errc::kInvalidArgument, option + ": '" + text.substr(colon + 1) + "' is not a port number");
  hp.port = static_cast<uint16_t>(port);
  return hp;
}

}  // namespace mlfx
