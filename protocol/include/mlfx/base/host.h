// Who and where: identity facts recorded in manifests and custody events.
#pragma once

#include <string>

namespace mlfx {

struct HostIdentity {
  std::string hostname;
  std::string machine_id;  // /etc/machine-id, empty when unreadable
  std::string user;        // login name of the real uid
  unsigned uid = 0;
};

HostIdentity local_host_identity();

}  // namespace mlfx
