// Who and where: identity facts recorded in manifests and custody events.
#pragma once

#include <cstdint>
#include <string>

#include "mlfx/base/result.h"

namespace mlfx {

struct HostIdentity {
  std::string hostname;
  std::string machine_id;  // /etc/machine-id, empty when unreadable
  std::string user;        // login name of the real uid
  unsigned uid = 0;
};

HostIdentity local_host_identity();

// "HOST:PORT" or "[IPv6]:PORT" as given to --listen or --server; `option` names it in
// messages. Port 0 ("any free port") only where `allow_any_port`.
struct HostPort {
  std::string host;
  uint16_t port = 0;
};
Result<HostPort> parse_host_port(const std::string& text, const std::string& option, bool allow_any_port);

}  // namespace mlfx
