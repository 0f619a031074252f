// Anonymous and hostile peers of a real `mlfx serve`, and what the intake process holds while
// they come: floods of plain TCP connections from chosen loopback addresses (all of 127/8 is
// loopback, so a test can be several "hosts"), memory (VmHWM, VmRSS), sockets and disk.
#pragma once

#include "intake/raw_client.h"  // first: it includes <utility> before any asio header

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>

#include <atomic>
#include <thread>

namespace mlfx::testing {

// AddressSanitizer reserves terabytes of address space: no RLIMIT_AS under it.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAsan = true;
#else
inline constexpr bool kAsan = false;
#endif

// Runs the intake with its address space capped (a crash or abort fails the test), except
// under ASan, where the tests read its VmHWM instead.
inline std::string address_space_cap(uint64_t bytes) {
  return kAsan ? "" : "prlimit --as=" + std::to_string(bytes) + " --";
}

// A flood needs more descriptors than a default soft limit.
inline void raise_fd_limit() {
  rlimit r{};
  getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = r.rlim_max;
  setrlimit(RLIMIT_NOFILE, &r);
}

// A field of /proc/PID/status in KiB (VmHWM: peak resident memory, VmRSS: now); 0 if gone.
inline uint64_t proc_status_kb(pid_t pid, const std::string& field) {
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10);
  return 0;
}

// Sockets the process holds open.
inline size_t open_sockets(pid_t pid) {
  size_t n = 0;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& name : list_dir(dir)) {
    char target[64] = {};
    if (readlink((dir + "/" + name).c_str(), target, sizeof target - 1) > 0) n += std::string(target).rfind("socket:", 0) == 0;
  }
  return n;
}

// Bytes of disk the files under `dir` occupy (allocated blocks, not apparent sizes).
inline uint64_t disk_usage(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st {};
    if (lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) total += uint64_t(st.st_blocks) * 512;
  }
  return total;
}

// A TCP connection from `source` to the intake on 127.0.0.1; -1 when it cannot be made.
inline int tcp_connect(int port, const std::string& source) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in from{}, to{};
  from.sin_family = to.sin_family = AF_INET;
  inet_pton(AF_INET, source.c_str(), &from.sin_addr);
  to.sin_port = htons(static_cast<uint16_t>(port));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

// `count` plain TCP connections kept open to the intake from `sources` in turn, on a thread of
// their own. Each sends `payload` one byte per `drip` (silent when empty); one the intake
// closes is opened again (at most `reopen_per_tick` per 20 ms), so the flood never lets up.
class TcpFlood {
 public:
  struct Options {
    int port = 0;
    std::vector<std::string> sources{"127.0.0.2"};
    size_t count = 256;
    std::string payload;
    std::chrono::milliseconds drip{200};
    size_t reopen_per_tick = 16;
  };

  explicit TcpFlood(Options o) : o_(std::move(o)) {
    raise_fd_limit();
    for (size_t i = 0; i < o_.count; ++i) conns_.push_back({open(i), 0, std::chrono::steady_clock::now()});
    thread_ = std::thread([this] { run(); });
  }
  TcpFlood(const TcpFlood&) = delete;
  ~TcpFlood() {
    stop_ = true;
    thread_.join();
    for (auto& c : conns_)
      if (c.fd >= 0) close(c.fd);
  }
  size_t opened() const { return opened_; }
  // Connections the intake ended, and the longest any of them was held before that.
  size_t closed_by_intake() const { return closed_; }
  double longest_held_s() const { return longest_ms_ / 1000.0; }

 private:
  struct Conn {
    int fd;
    size_t sent;
    std::chrono::steady_clock::time_point since;
  };

  int open(size_t i) {
    const int fd = tcp_connect(o_.port, o_.sources[i % o_.sources.size()]);
    if (fd >= 0) {
      fcntl(fd, F_SETFL, O_NONBLOCK);
      ++opened_;
    }
    return fd;
  }

  void run() {
    auto next_drip = std::chrono::steady_clock::now();
    while (!stop_) {
      std::vector<pollfd> fds;
      for (const auto& c : conns_) fds.push_back({c.fd, POLLIN | POLLRDHUP, 0});
      poll(fds.data(), fds.size(), 20);
      const auto now = std::chrono::steady_clock::now();
      size_t reopened = 0;
      for (size_t i = 0; i < conns_.size(); ++i) {
        Conn& c = conns_[i];
        if (c.fd >= 0 && (fds[i].revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR))) {
          char buf[4096];
          const ssize_t n = recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
          if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
            close(c.fd);
            c.fd = -1;
            ++closed_;
            const auto held = std::chrono::duration_cast<std::chrono::milliseconds>(now - c.since).count();
            longest_ms_ = std::max<int64_t>(longest_ms_, held);
          }
        }
        if (c.fd < 0 && reopened < o_.reopen_per_tick) {
          ++reopened;
          c = {open(i), 0, now};
        }
      }
      if (!o_.payload.empty() && now >= next_drip) {
        next_drip = now + o_.drip;
        for (auto& c : conns_)
          if (c.fd >= 0 && c.sent < o_.payload.size() && send(c.fd, &o_.payload[c.sent], 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1)
            ++c.sent;
      }
    }
  }

  Options o_;
  std::vector<Conn> conns_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> opened_{0}, closed_{0};
  std::atomic<int64_t> longest_ms_{0};
  std::thread thread_;
};

// The first bytes of a TLS 1.3 ClientHello, as a slow client would send them.
inline std::string client_hello_start() {
  std::string s = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
  return s + std::string(64, '\x42');
}

}  // namespace mlfx::testing
