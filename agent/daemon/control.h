// The daemon's local sockets: SOCK_SEQPACKET Unix sockets carrying one JSON object per message
// each way: a request at most kMaxRequest bytes (the peer is local but not trusted beyond its
// identity), a reply at most kMaxReply (status with its recent triggers).
//
//   control socket (mlfx-agent trigger / status; root or the control group):
//     {"op":"status"}                                        -> {"ok":true,"status":{...}}
//     {"op":"trigger","pid":N | "target":"NAME","reason":"…","wait":true}
//                                                            -> {"ok":true,"trigger":{...}}
//   anomaly socket (the model application's hook; anyone, for itself only):
//     {"op":"anomaly","reason":"…"}                          -> {"ok":true,"trigger":{...}}
//
// Every reply is {"ok":false,"error":"…"} when refused. The peer's identity is the kernel's
// (SO_PEERCRED), never what a message says.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>

#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::daemon {

inline constexpr size_t kMaxRequest = 64 * 1024;
inline constexpr size_t kMaxReply = 1024 * 1024;

struct Peer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// A listening socket at `path` (its directory created 0755 when missing; a stale socket file
// replaced): mode and group as given (group -1: unchanged).
Result<File> listen_socket(const std::string& path, mode_t mode, gid_t group);

// The connecting process, as the kernel saw it at connect().
Result<Peer> peer_of(int fd);
// Whether `peer` is root or a member (primary or supplementary) of `group`.
bool in_group(const Peer& peer, gid_t group);
// A group's id by name.
Result<gid_t> group_id(const std::string& name);

// Replies up to kMaxReply need a send buffer that large: set on accepted connections.
void make_room_for_replies(int fd);
Status send_message(int fd, const json::Json& message, size_t max = kMaxRequest);
// One message; kBadFormat when it is not a JSON object or is longer than `max`.
Result<json::Json> receive_message(int fd, size_t max = kMaxRequest);

// The client side: connects to `path`, sends `request`, waits up to `timeout` for the reply.
Result<json::Json> request(const std::string& path, const json::Json& request, std::chrono::seconds timeout);

}  // namespace mlfx::agent::daemon
