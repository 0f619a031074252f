#include "daemon/control.h"

#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "capture/process/procfs.h"

namespace mlfx::agent::daemon {
namespace {

using process::errno_name;

Result<sockaddr_un> address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path)
    return fail(Errc::kInvalidArgument, "socket path '" + path + "' is empty or longer than " +
                                            std::to_string(sizeof a.sun_path - 1) + " bytes");
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

}  // namespace

Result<File> listen_socket(const std::string& path, mode_t mode, gid_t group) {
  MLFX_ASSIGN(sockaddr_un a, address(path));
  const std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty() && ::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return fail(Errc::kIo, "cannot create " + dir + ": " + errno_name(errno));
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail(Errc::kIo, "socket: " + errno_name(errno));
  File sock = File(fd, path);
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return fail(Errc::kExists, path + " exists and is not a socket; remove it or choose another path");
    ::unlink(path.c_str());  // a stale socket of an earlier run
  }
  const mode_t old = ::umask(0777 & ~mode);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::umask(old);
  if (rc != 0) return fail(Errc::kIo, "cannot bind " + path + ": " + errno_name(errno));
  if (::chmod(path.c_str(), mode) != 0 || (group != gid_t(-1) && ::chown(path.c_str(), 0, group) != 0))
    return fail(Errc::kIo, "cannot set the mode or group of " + path + ": " + errno_name(errno));
  if (::listen(fd, 64) != 0) return fail(Errc::kIo, "listen on " + path + ": " + errno_name(errno));
  return sock;
}

Result<Peer> peer_of(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return fail(Errc::kIo, "SO_PEERCRED: " + errno_name(errno));
  return Peer{cred.pid, cred.uid, cred.gid};
}

bool in_group(const Peer& peer, gid_t group) {
  if (peer.uid == 0 || peer.gid == group) return true;
  auto status = process::read_proc_file(process::proc_path(peer.pid, "status"), 1 << 16);
  if (!status) return false;
  auto groups = process::status_field(*status, "Groups");
  if (!groups) return false;
  size_t pos = 0;
  while (pos < groups->size()) {
    size_t end = groups->find(' ', pos);
    if (end == std::string::npos) end = groups->size();
    if (groups->substr(pos, end - pos) == std::to_string(group)) return true;
    pos = end + 1;
  }
  return false;
}

Result<gid_t> group_id(const std::string& name) {
  group g{}, *found = nullptr;
  char buf[4096];
  if (::getgrnam_r(name.c_str(), &g, buf, sizeof buf, &found) != 0 || !found)
    return fail(Errc::kNotFound, "no group '" + name + "' on this machine (control_group): create it with "
                                 "'groupadd --system " + name + "' or remove control_group");
  return found->gr_gid;
}

void make_room_for_replies(int fd) {
  // A datagram must fit the sender's buffer whole; root may exceed net.core.wmem_max.
  const int bytes = static_cast<int>(2 * kMaxReply);
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) != 0)
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

Status send_message(int fd, const json::Json& message, size_t max) {
  const std::string text = message.dump(-1, ' ', false, json::Json::error_handler_t::replace);
  if (text.size() > max)
    return fail(Errc::kInvalidArgument, "message of " + std::to_string(text.size()) + " bytes, more than " +
                                            std::to_string(max));
  ssize_t n = ::send(fd, text.data(), text.size(), MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(text.size())) return fail(Errc::kIo, "send: " + errno_name(errno));
  return {};
}

Result<json::Json> receive_message(int fd, size_t max) {
  std::string text(max + 1, '\0');
  ssize_t n = ::recv(fd, text.data(), text.size(), MSG_TRUNC);
  if (n < 0) return fail(Errc::kIo, "recv: " + errno_name(errno));
  if (n == 0) return fail(Errc::kIo, "the other side closed the connection");
  if (static_cast<size_t>(n) > max)
    return fail(Errc::kBadFormat, "message longer than " + std::to_string(max) + " bytes");
  text.resize(static_cast<size_t>(n));
  json::Json j = json::Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(Errc::kBadFormat, "message is not a JSON object");
  return j;
}

Result<json::Json> request(const std::string& path, const json::Json& req, std::chrono::seconds timeout) {
  MLFX_ASSIGN(sockaddr_un a, address(path));
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(Errc::kIo, "socket: " + errno_name(errno));
  File sock = File(fd, path);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ECONNREFUSED)
      return fail(Errc::kNotFound, "no mlfx-agent daemon at " + path + " (" + errno_name(err) +
                                       "); start it with 'mlfx-agent run --config FILE' or name its socket");
    if (err == EACCES)
      return fail(Errc::kPermission, "not allowed to use " + path + " (" + errno_name(err) +
                                         "); run as root or as a member of the daemon's control_group");
    return fail(Errc::kIo, "connect to " + path + ": " + errno_name(err));
  }
  MLFX_TRY(send_message(fd, req));
  pollfd p{fd, POLLIN, 0};
  int rc = ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(timeout).count()));
  if (rc == 0) return fail(Errc::kIo, "no reply from the daemon within " + std::to_string(timeout.count()) + " s");
  return receive_message(fd, kMaxReply);
}

}  // namespace mlfx::agent::daemon
