#include "mlfx/base/host.h"

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

}  // namespace mlfx
