#include "cupti/cuda_errors.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cupti/json_line.h"

namespace mlfx::cupti {

bool is_benign_result(int code) {
  switch (code) {
    case 0:    // CUDA_SUCCESS
    case 500:  // CUDA_ERROR_NOT_FOUND
    case 600:  // CUDA_ERROR_NOT_READY
    case 704:  // CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
    case 705:  // CUDA_ERROR_PEER_ACCESS_NOT_ENABLED
    case 712:  // CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED
    case 713:  // CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED
    case 801:  // CUDA_ERROR_NOT_SUPPORTED
      return true;
    default:
      return false;
  }
}

bool RateLimiter::allow(uint64_t now_ns, uint64_t* suppressed) {
  std::lock_guard lock(mu_);
  if (any_ && now_ns - last_ns_ < interval_ns_) {
    ++suppressed_;
    ++suppressed_total_;
    return false;
  }
  any_ = true;
  last_ns_ = now_ns;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

uint64_t RateLimiter::suppressed_total() const {
  std::lock_guard lock(mu_);
  return suppressed_total_;
}

std::string anomaly_message(const std::string& api, int code) {
  const char* name = cuda_error_name(code);
  JsonLine j;
  j.str("op", "cuda-error")
      .str("api", api)
      .str("error", name ? name : "CUDA_ERROR_" + std::to_string(code));
  j.num("code", static_cast<int64_t>(code));
  return j.done(false);
}

bool send_anomaly(const std::string& socket_path, const std::string& message, std::string* error) {
  sockaddr_un addr{};
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    *error = "anomaly socket path empty or too long";
    return false;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  bool sent = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    *error = "connect " + socket_path + ": " + std::strerror(errno);
  } else if (::send(fd, message.data(), message.size(), MSG_DONTWAIT | MSG_NOSIGNAL) !=
             static_cast<ssize_t>(message.size())) {
    *error = "send " + socket_path + ": " + std::strerror(errno);
  } else {
    sent = true;
  }
  ::close(fd);
  return sent;
}

}  // namespace mlfx::cupti
