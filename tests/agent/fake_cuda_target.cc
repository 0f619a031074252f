// A stand-in for a CUDA process on machines without a GPU (CI, this host): it does with the
// coredump variables what the driver documents (cuda-gdb manual §4.5, the driver API's
// Coredump Attributes Control; ../shared/reference/gpu-capture.md §1): at start it makes the
// pipe CUDA_COREDUMP_PIPE names (%p, %h expanded) when CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1,
// waits for a byte on it, then writes a GPU core dump to CUDA_COREDUMP_FILE (streamed into it
// when that is an existing FIFO), prints the driver's progress lines when
// CUDA_COREDUMP_SHOW_PROGRESS=1, and runs on. The dump is built by mlfx::cudacore::CoreWriter
// from NVIDIA's public format: meta data, a device table, a context table, and global memory
// of a deterministic pattern. With MLFX_CUPTI_TRIGGER and MLFX_CUPTI_OUTPUT instead (and no
// CUDA_ENABLE_USER_TRIGGERED_COREDUMP), it plays the CUPTI library's copy-out the same way.
//
//   fake_cuda_target [--global-bytes N] [--truth FILE] [--ready FILE]
//                    [--mode normal|never|half|exit-on-trigger] [--cuda-error-socket PATH]
//   --truth FILE     writes the same dump to FILE first (what the test compares with)
//   --ready FILE     made once the pipe exists
//   --mode never     reads the trigger and writes nothing (a stuck driver)
//          half      writes half the dump, then exits (a target that dies mid-dump)
//          exit-on-trigger  exits when triggered
//          late      waits 3 s after the trigger, then writes (a driver slower than the agent
//          waits)
//          stall     writes half, stalls 3 s, writes the rest, with SIGPIPE at its default (a
//                    driver that does not block it dies if its reader goes away)
//   --cuda-error-socket PATH  on SIGUSR1, reports a CUDA error to the agent's anomaly socket
//                    as the CUPTI library does:
//                    {"op":"cuda-error","api":...,"error":...,"code":700}
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

#include "mlfx/cudacore/writer.h"

namespace {

volatile sig_atomic_t g_report_error = 0;
void on_usr1(int) { g_report_error = 1; }

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string expand(const std::string& templ) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::string out;
  for (size_t i = 0; i < templ.size(); ++i) {
    if (templ[i] == '%' && i + 1 < templ.size()) {
      const char c = templ[++i];
      if (c == 'p')
        out += std::to_string(getpid());
      else if (c == 'h')
        out += host;
      else if (c == 't')
        out += std::to_string(time(nullptr));
      else
        out += c;
    } else {
      out += templ[i];
    }
  }
  return out;
}

// A byte of global memory section `section` at `offset`: splitmix64 of both, so that any
// misplaced or repeated block shows.
uint8_t pattern(uint32_t section, uint64_t offset) {
  uint64_t z = (uint64_t{section} << 56) ^ (offset / 8) ^ 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<uint8_t>(z >> (8 * (offset % 8)));
}

mlfx::cudacore::CoreWriter make_dump(uint64_t global_bytes) {
  using namespace mlfx::cudacore;
  CoreWriter w;
  w.add_meta_data({"mlfx fake_cuda_target", 580, 65, 13, 0, 0, 1765000000});
  DeviceInfo dev;
  dev.name = "Fake GPU (mlfx tests)";
  dev.type = "GH100";
  dev.sm_type = "sm_90";
  dev.num_sms = 4;
  dev.sm_major = 9;
  const uint32_t devtbl = w.add_device_table({dev});
  w.add_context_table(
      devtbl, 0, {{0x5555'0000'1000ull, 0x7f00'0000'0000ull, 0, static_cast<uint32_t>(getpid())}});
  // Three sections: two halves of the size asked for, and a small one.
  const uint64_t sizes[] = {global_bytes / 2, global_bytes - global_bytes / 2, 4096};
  uint64_t addr = 0x7f00'0000'0000ull;
  for (uint32_t i = 0; i < 3; ++i) {
    const uint64_t size = sizes[i];
    w.add_memory(addr, size, [i, size](const Sink& emit, std::string*) {
      uint8_t block[1 << 16];
      for (uint64_t at = 0; at < size;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof block, size - at));
        for (size_t k = 0; k < n; ++k) block[k] = pattern(i, at + k);
        if (!emit(block, n)) return false;
        at += n;
      }
      return true;
    });
    addr += (size + 0xfffff) & ~uint64_t{0xfffff};
  }
  return w;
}

bool write_all(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len) {
    const ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Writes bytes [from, limit) of the dump to fd; stops (false) at `limit`.
bool write_dump(const mlfx::cudacore::CoreWriter& w, int fd, uint64_t limit = UINT64_MAX, uint64_t from = 0) {
  uint64_t at = 0;
  std::string error;
  return w.write(
      [&](const void* data, size_t len) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(len, limit - at));
        const size_t skip = static_cast<size_t>(std::min<uint64_t>(n, from > at ? from - at : 0));
        if (n > skip && !write_all(fd, static_cast<const uint8_t*>(data) + skip, n - skip)) return false;
        at += n;
        return n == len;
      },
      &error);
}

void progress(bool show, const char* line) {
  if (show) std::fprintf(stderr, "coredump: %s\n", line);
}

void report_cuda_error(const std::string& socket_path) {
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", socket_path.c_str());
  const std::string msg =
      R"({"op":"cuda-error","api":"cuLaunchKernel","error":"CUDA_ERROR_ILLEGAL_ADDRESS","code":700})";
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) < 0) {
    std::fprintf(stderr, "fake_cuda_target: reporting the CUDA error: %s\n", std::strerror(errno));
  } else {
    char reply[65536];
    const ssize_t n = recv(fd, reply, sizeof reply - 1, 0);
    std::fprintf(stderr, "fake_cuda_target: the agent replied: %.*s\n",
                 n > 0 ? static_cast<int>(n) : 0, reply);
  }
  if (fd >= 0) close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t global_bytes = 1 << 20;
  std::string truth, ready, mode = "normal", error_socket;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--global-bytes")
      global_bytes = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--truth")
      truth = v;
    else if (k == "--ready")
      ready = v;
    else if (k == "--mode")
      mode = v;
    else if (k == "--cuda-error-socket")
      error_socket = v;
    else {
      std::fprintf(stderr, "fake_cuda_target: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (mode != "stall") signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, nullptr);
  const mlfx::cudacore::CoreWriter dump = make_dump(global_bytes);
  if (!truth.empty()) {
    const int fd = open(truth.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || !write_dump(dump, fd)) return 1;
    close(fd);
  }
  const bool driver_armed = env("CUDA_ENABLE_USER_TRIGGERED_COREDUMP") == "1";
  // Not armed for the driver's dump but for the CUPTI library's copy-out: its trigger FIFO and
  // output instead (agent/cupti, protocol/doc/cupti-allocations.md), the same dump format.
  const bool cupti = !driver_armed && !env("MLFX_CUPTI_TRIGGER").empty() && !env("MLFX_CUPTI_OUTPUT").empty();
  const bool armed = driver_armed || cupti;
  const bool show = env("CUDA_COREDUMP_SHOW_PROGRESS") == "1";
  const std::string pipe_path =
      cupti ? expand(env("MLFX_CUPTI_TRIGGER"))
            : expand(env("CUDA_COREDUMP_PIPE").empty() ? "corepipe.cuda.%h.%p" : env("CUDA_COREDUMP_PIPE"));
  const std::string file_path =
      cupti ? expand(env("MLFX_CUPTI_OUTPUT"))
            : expand(env("CUDA_COREDUMP_FILE").empty() ? "core_%t_%h_%p.nvcudmp" : env("CUDA_COREDUMP_FILE"));
  int pipe_fd = -1;
  if (armed) {
    if (mkfifo(pipe_path.c_str(), 0600) != 0 && errno != EEXIST) {
      std::fprintf(stderr, "fake_cuda_target: mkfifo %s: %s\n", pipe_path.c_str(),
                   std::strerror(errno));
      return 1;
    }
    pipe_fd = open(pipe_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  }
  if (!ready.empty()) close(open(ready.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  while (true) {
    if (g_report_error) {
      g_report_error = 0;
      report_cuda_error(error_socket);
    }
    pollfd p{pipe_fd, POLLIN, 0};
    if (poll(&p, pipe_fd >= 0 ? 1 : 0, 100) <= 0 || !(p.revents & (POLLIN | POLLHUP))) continue;
    char byte;
    const ssize_t n = read(pipe_fd, &byte, 1);
    if (n <= 0) {  // the writer went away without a byte: listen again
      close(pipe_fd);
      pipe_fd = open(pipe_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
      continue;
    }
    if (mode == "exit-on-trigger") return 3;
    if (mode == "never") continue;
    if (mode == "late") sleep(3);
    progress(show, "Calculating ELF file layout");
    // An existing FIFO is streamed into; anything else is a file made (truncated) here.
    struct stat st {};
    const bool fifo = stat(file_path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
    const int out =
        open(file_path.c_str(),
             fifo ? O_WRONLY | O_CLOEXEC : O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
      std::fprintf(stderr, "fake_cuda_target: open %s: %s\n", file_path.c_str(),
                   std::strerror(errno));
      continue;
    }
    std::string line = "Writing ELF file to " + file_path;
    progress(show, line.c_str());
    line = "Writing out global memory (" + std::to_string(global_bytes + 4096) + " bytes)";
    progress(show, line.c_str());
    if (mode == "half") {
      write_dump(dump, out, dump.total_size() / 2);
      _exit(4);
    }
    uint64_t from = 0;
    if (mode == "stall") {
      from = dump.total_size() / 2;
      write_dump(dump, out, from);
      sleep(3);
    }
    const bool ok = write_dump(dump, out, UINT64_MAX, from);
    close(out);
    progress(show, ok ? "All done" : "Failed to write the core dump");
  }
}
