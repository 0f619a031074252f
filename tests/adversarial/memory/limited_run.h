// Runs a binary under hard resource limits, as a hostile input must be survivable: address
// space (RLIMIT_AS, set in the child before exec), file size (RLIMIT_FSIZE: a runaway export
// dies of SIGXFSZ instead of filling the disk) and wall time (SIGKILL at the deadline).
// Reports how it ended and its peak RSS (wait4).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace mlfx::testing {

// AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot be used there, and
// its shadow memory and quarantine raise the RSS.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAsan = true;
#else
inline constexpr bool kAsan = false;
#endif
#else
inline constexpr bool kAsan = false;
#endif

struct Limited {
  uint64_t address_space = 0;  // RLIMIT_AS; 0: none
  uint64_t file_size = 0;      // RLIMIT_FSIZE; 0: none
  int seconds = 120;
};

struct LimitedResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  bool timed_out = false;
  uint64_t max_rss = 0;  // bytes
  double seconds = 0;
  std::string output;  // stdout and stderr together

  std::string describe() const {
    return (timed_out ? "timed out" : signal ? "killed by signal " + std::to_string(signal) : "exit " + std::to_string(exit_code)) +
           ", peak RSS " + std::to_string(max_rss >> 20) + " MiB, " + std::to_string(seconds) + " s:\n" +
           output.substr(output.size() > 4000 ? output.size() - 4000 : 0);
  }
};

inline LimitedResult run_limited(const std::vector<std::string>& argv, const Limited& limits, const std::string& log) {
  LimitedResult r;
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    if (limits.address_space) {
      rlimit as{limits.address_space, limits.address_space};
      setrlimit(RLIMIT_AS, &as);
    }
    if (limits.file_size) {
      rlimit fs{limits.file_size, limits.file_size};
      setrlimit(RLIMIT_FSIZE, &fs);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  rusage usage{};
  for (;;) {
    const pid_t done = wait4(pid, &status, WNOHANG, &usage);
    if (done == pid) break;
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(limits.seconds)) {
      kill(pid, SIGKILL);
      wait4(pid, &status, 0, &usage);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.max_rss = uint64_t(usage.ru_maxrss) * 1024;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.output = read_file(log);
  return r;
}

}  // namespace mlfx::testing
