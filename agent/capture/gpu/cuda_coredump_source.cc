#include "capture/gpu/cuda_coredump_source.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>

#include "capture/capture.h"
#include "capture/process/procfs.h"
#include "mlfx/base/progress.h"

extern char** environ;

namespace mlfx::agent::gpu {

namespace {

constexpr size_t kReadBlock = 1u << 20;
constexpr int kPipeBytes = 1 << 20;
constexpr char kNotArmed[] = "is not armed for a GPU core dump";

double ms(int64_t from_ns, int64_t to_ns) {
  return from_ns && to_ns ? double(to_ns - from_ns) / 1e6 : 0.0;
}

std::optional<process::ProcStat> stat_of(pid_t pid) {
  auto text = process::read_proc_file(process::proc_path(pid, "stat"), 4096);
  if (!text) return std::nullopt;
  auto st = process::parse_proc_stat(*text);
  return st ? std::optional<process::ProcStat>(*st) : std::nullopt;
}

// Alive, not a zombie, and the process that was checked before (same start time).
bool same_process_alive(pid_t pid, uint64_t start_time) {
  auto st = stat_of(pid);
  return st && st->state != 'Z' && st->state != 'X' && st->starttime == start_time;
}

// The length an ELF dump declares (its section headers end it; the CUDA driver and the
// agent's writer put them last), learnt from the bytes as they stream past: a dump that ends
// short of it was cut off. gzip or anything else: unknown (0).
class DumpShape {
 public:
  // Copies only the bytes it reads (the ELF header, section 0's sh_size): gigabytes stream past.
  void feed(const uint8_t* p, size_t n) {
    const uint64_t start = at_, end = at_ + n;
    if (start < sizeof head_) {
      at_ = std::min<uint64_t>(end, sizeof head_);
      std::memcpy(head_ + start, p, at_ - start);
      if (at_ == sizeof head_) parse_header();
    }
    if (shoff_) {  // section 0's sh_size, at shoff + 0x20 (extended numbering's count)
      const uint64_t lo = std::max(start, shoff_ + 0x20), hi = std::min(end, shoff_ + 0x28);
      if (lo < hi) std::memcpy(shdr0_size_ + (lo - shoff_ - 0x20), p + (lo - start), hi - lo);
    }
    at_ = end;
  }
  std::string format() const {
    if (at_ >= 4 && std::memcmp(head_,
                                "\x7f"
                                "ELF",
                                4) == 0)
      return "elf";
    if (at_ >= 2 && head_[0] == 0x1f && head_[1] == 0x8b) return "gzip";
    return at_ ? "unknown" : "empty";
  }
  // 0 when the dump does not say.
  uint64_t declared_size() const {
    if (!shoff_ || !shentsize_) return 0;
    uint64_t count = shnum_;
    if (!count) {  // extended numbering: section 0's sh_size counts them
      if (at_ < shoff_ + 0x28) return 0;
      std::memcpy(&count, shdr0_size_, 8);
    }
    return shoff_ + count * shentsize_;
  }

 private:
  void parse_header() {
    if (format() != "elf" || head_[4] != 2 /* ELFCLASS64 */ || head_[5] != 1 /* little-endian */)
      return;
    std::memcpy(&shoff_, head_ + 0x28, 8);
    std::memcpy(&shentsize_, head_ + 0x3a, 2);
    std::memcpy(&shnum_, head_ + 0x3c, 2);
    if (shoff_ > (uint64_t{1} << 50) || shentsize_ != 64) shoff_ = 0;  // not a header this checks
  }
  uint8_t head_[64] = {};
  uint8_t shdr0_size_[8] = {};
  uint64_t at_ = 0, shoff_ = 0;
  uint16_t shentsize_ = 0, shnum_ = 0;
};

// The effective uid of "Uid:\treal\teffective\tsaved\tfs" in /proc/PID/status.
uid_t effective_uid(const std::string& status) {
  const auto uids = process::status_field(status, "Uid");
  if (!uids) return 0;
  unsigned long real = 0, effective = 0;
  if (std::sscanf(uids->c_str(), "%lu %lu", &real, &effective) != 2) return 0;
  return static_cast<uid_t>(effective);
}

}  // namespace

// A driver still writing when its reader goes away gets EPIPE and SIGPIPE, which kills the target
// unless the driver blocks the signal: after a failed dump a detached grandchild of the agent
// (reparented to init, nothing to reap) reads on and discards until the driver closes its end,
// at most an hour. Async-signal-safe calls only (and close_range): the agent has other threads.
static void drain_in_background(int fifo_fd) {
  const pid_t child = ::fork();
  if (child == 0) {
    if (::fork() == 0) {
      // Holds the FIFO's read end alone: not the agent's bundle, sockets or other files.
      const int fd = ::dup2(fifo_fd, 0);
      ::close_range(1, ~0U, 0);
      static char sink[1 << 16];
      timespec start{}, now{};
      ::clock_gettime(CLOCK_MONOTONIC, &start);
      for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 1000) < 0 && errno != EINTR) break;
        const ssize_t n = ::read(fd, sink, sizeof sink);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;  // the driver's end closed
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 3600) break;
      }
      ::_exit(0);
    }
    ::_exit(0);
  }
  if (child > 0) ::waitpid(child, nullptr, 0);
}

// The FIFO the dump arrives through, in the agent's directory; removed on every path.
struct CudaCoredumpSource::Fifo {
  int dir = -1, fd = -1;
  std::string name, path;
  bool blocked = false;
  ~Fifo() {
    if (fd >= 0) ::close(fd);
    if (dir >= 0) {
      if (!name.empty() && !blocked) ::unlinkat(dir, name.c_str(), 0);
      ::close(dir);
    }
  }

  // After a failed dump: an empty directory takes the FIFO's place, so that a driver that
  // starts writing late fails to open it (EISDIR) instead of making a file of the whole GPU
  // memory here (/run is RAM). The next capture removes it. A driver still writing is drained.
  void block() {
    if (fd >= 0) drain_in_background(fd);
    if (fd >= 0) ::close(fd);
    fd = -1;
    if (::unlinkat(dir, name.c_str(), 0) == 0 && ::mkdirat(dir, name.c_str(), 0500) == 0)
      blocked = true;
  }

  // Makes DIR/NAME a FIFO the target's user alone may open, and opens its read end.
  Status make(const std::string& gpu_dir, const std::string& file_name, uid_t owner) {
    MLFX_ASSIGN(dir, open_gpu_dir(gpu_dir));
    path = gpu_dir + "/" + file_name;
    // A stale or planted entry goes first (never followed); whoever re-makes it in between
    // makes mkfifoat fail.
    if (::unlinkat(dir, file_name.c_str(), 0) != 0 && errno != ENOENT &&
        !(errno == EISDIR &&
          ::unlinkat(dir, file_name.c_str(), AT_REMOVEDIR) == 0))  // a failed capture's block()
      return fail(Errc::kIo, "removing the stale " + path + ": " + process::errno_name(errno));
    if (::mkfifoat(dir, file_name.c_str(), 0600) != 0)
      return fail(Errc::kIo, "mkfifo " + path + ": " + process::errno_name(errno));
    name = file_name;
    fd = ::openat(dir, file_name.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
      return fail(Errc::kIo, "opening the FIFO " + path + ": " + process::errno_name(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_uid != ::geteuid())
      return fail(Errc::kPermission,
                  path + " is not the FIFO the agent made: someone replaced it; refused");
    // The driver opens it as the target's user.
    if (owner != st.st_uid && ::fchown(fd, owner, static_cast<gid_t>(-1)) != 0)
      return fail(Errc::kIo, "chown " + path + ": " + process::errno_name(errno));
    (void)::fcntl(fd, F_SETPIPE_SZ, kPipeBytes);  // best effort: fewer wake-ups
    return {};
  }
};

bool CudaCoredumpSource::not_armed(const Error& e) {
  return e.code() == Errc::kUnsupported && e.message().find(kNotArmed) != std::string::npos;
}

Result<std::unique_ptr<CudaCoredumpSource>> CudaCoredumpSource::create(GpuCaptureOptions options) {
  const pid_t pid = options.pid;
  std::unique_ptr<CudaCoredumpSource> s(new CudaCoredumpSource(std::move(options)));
  const std::string who = "pid " + std::to_string(pid);
  auto st = stat_of(pid);
  if (!st) return fail(Errc::kNotFound, who + " does not exist");
  s->start_time_ = st->starttime;
  MLFX_ASSIGN(std::string status,
              process::read_proc_file(process::proc_path(pid, "status"), 1 << 16));
  s->target_uid_ = effective_uid(status);

  MLFX_ASSIGN(s->arming_, read_arming(pid, s->options_.dir));
  if (s->arming_.armed) {
    // The driver makes its pipe at cuInit: no pipe yet, no CUDA yet.
    auto dir = open_gpu_dir(s->options_.dir);  // missing: the driver could make no pipe either
    if (!dir && dir.error().code() != Errc::kNotFound) return fail(std::move(dir).error());
    struct stat ps {};
    const bool exists =
        dir && ::fstatat(*dir, s->arming_.pipe_name.c_str(), &ps, AT_SYMLINK_NOFOLLOW) == 0;
    if (dir) ::close(*dir);
    const std::string pipe = s->options_.dir + "/" + s->arming_.pipe_name;
    if (exists && (!S_ISFIFO(ps.st_mode) || ps.st_uid != s->target_uid_))
      return fail(Errc::kPermission, pipe + " is not a FIFO of the target's user (uid " +
                                         std::to_string(s->target_uid_) +
                                         "): not the driver's pipe; refused");
    if (!exists) {
      s->arming_.armed = false;
      s->arming_.why_not =
          "its CUDA driver has made no pipe at " + pipe + " (CUDA not initialised yet)";
    }
  }
  if (s->arming_.armed) {
    s->method_ = "pipe-trigger";
    return s;
  }
  // The CUPTI library's copy-out: its trigger FIFO, made at cuInit, must be there and the target's.
  if (s->arming_.cupti) {
    MLFX_ASSIGN(int dir, open_gpu_dir(s->options_.dir));
    struct stat ts {};
    const bool exists = ::fstatat(dir, s->arming_.cupti_trigger_name.c_str(), &ts, AT_SYMLINK_NOFOLLOW) == 0;
    ::close(dir);
    const std::string trigger = s->options_.dir + "/" + s->arming_.cupti_trigger_name;
    if (exists && (!S_ISFIFO(ts.st_mode) || ts.st_uid != s->target_uid_))
      return fail(Errc::kPermission, trigger + " is not a FIFO of the target's user: not the CUPTI library's; refused");
    if (exists) {
      s->method_ = "cupti-copy-out";
      return s;
    }
    s->arming_.why_not += "; and its CUPTI library has made no trigger at " + trigger + " (not loaded, or CUDA not initialised yet)";
  }
  // ptrace allows one tracer: a target the daemon holds for its fatal signals cannot take cuda-gdb.
  const auto tracer = process::status_field(status, "TracerPid");
  const bool traced = tracer && *tracer != "0";
  if (s->options_.allow_cuda_gdb && !traced)
    if (auto gdb = find_cuda_gdb()) {
      s->cuda_gdb_ = *gdb;
      s->method_ = "cuda-gdb";
      return s;
    }
  if (traced)
    return fail(Errc::kUnsupported, who + " " + kNotArmed + ": " + s->arming_.why_not +
                                        "; and cuda-gdb cannot attach "
                                        "instead: it is traced by pid " +
                                        *tracer);
  return fail(Errc::kUnsupported,
              who + " " + kNotArmed + ": " + s->arming_.why_not +
                  "; and no cuda-gdb to attach instead (/usr/local/cuda/bin/cuda-gdb, PATH)");
}

Status CudaCoredumpSource::trigger_pipe(const std::string& name, const std::string& listener) {
  MLFX_ASSIGN(int dir, open_gpu_dir(options_.dir));
  const std::string pipe = options_.dir + "/" + name;
  const int fd = ::openat(dir, name.c_str(), O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  const int err = errno;
  ::close(dir);
  if (fd < 0) {
    if (err == ENXIO || err == ENOENT)
      return fail(Errc::kUnsupported, "pid " + std::to_string(options_.pid) + " " + kNotArmed +
                                          ": nobody reads " + pipe + " (" +
                                          process::errno_name(err) +
                                          "): " + listener + " is not listening");
    return fail(Errc::kIo, "opening " + pipe + ": " + process::errno_name(err));
  }
  File f(fd, pipe);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_uid != target_uid_)
    return fail(Errc::kPermission, pipe + " is not the FIFO of " + listener + ": refused");
  const uint8_t one = 1;  // what XLA and sglang write: one byte starts one dump
  if (::write(fd, &one, 1) != 1)
    return fail(Errc::kIo, "triggering through " + pipe + ": " + process::errno_name(errno));
  return {};
}

Result<pid_t> CudaCoredumpSource::start_cuda_gdb(const std::string& core_path) {
  const std::vector<std::string> args = cuda_gdb_argv(cuda_gdb_, options_.pid, core_path);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t child = 0;
  const int rc = ::posix_spawn(&child, cuda_gdb_.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return fail(Errc::kIo, "starting " + cuda_gdb_ + ": " + process::errno_name(rc));
  return child;
}

Status CudaCoredumpSource::stream_dump(Fifo& fifo, bundle::BundleWriter& w, bool show_progress,
                                       pid_t helper) {
  using namespace std::chrono;
  const std::string who = "pid " + std::to_string(options_.pid);
  std::optional<Progress> bar;
  if (show_progress) bar.emplace("GPU core dump of " + who, 0);
  DumpShape shape;
  int64_t last_data_ns = trigger_ns_;
  bool eof = false;
  int helper_status = -1;
  auto seconds_since = [](int64_t ns) { return double(monotonic_ns() - ns) / 1e9; };
  while (!eof) {
    if (options_.cancel && *options_.cancel) return fail(Errc::kIo, "interrupted");
    pollfd p{fifo.fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, 250);
    if (ready < 0 && errno != EINTR) return fail(Errc::kIo, "poll: " + process::errno_name(errno));
    // Only when poll says so: before the driver opens its end a read would return 0 as if it had
    // ended.
    while (ready > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
      MLFX_ASSIGN(std::span<uint8_t> room, w.buffer(kReadBlock));
      const ssize_t n = ::read(fifo.fd, room.data(), room.size());
      if (n < 0) {
        const int err = errno;
        MLFX_TRY(w.commit(0));
        if (err == EINTR) continue;
        if (err == EAGAIN) break;
        return fail(Errc::kIo, "reading the GPU core dump from " + fifo.path + ": " +
                                   process::errno_name(err));
      }
      if (n == 0) {
        MLFX_TRY(w.commit(0));
        eof = true;
        break;
      }
      if (!first_byte_ns_) first_byte_ns_ = monotonic_ns();
      shape.feed(room.data(), static_cast<size_t>(n));
      MLFX_TRY(w.commit(static_cast<size_t>(n)));
      bytes_ += static_cast<uint64_t>(n);
      last_data_ns = monotonic_ns();
      if (bar) bar->advance(static_cast<uint64_t>(n));
    }
    if (eof) break;
    if (helper > 0 && helper_status < 0) {
      int status = 0;
      if (::waitpid(helper, &status, WNOHANG) == helper) helper_status = status;
      if (helper_status >= 0 && !first_byte_ns_)
        return fail(Errc::kIo, "cuda-gdb ended (status " + std::to_string(helper_status) +
                                   ") without writing a GPU core dump");
    }
    if (!same_process_alive(options_.pid, start_time_))
      return fail(Errc::kIo, who + " exited during its GPU core dump, after " +
                                 std::to_string(bytes_) +
                                 " bytes: a part of a dump is not kept as one");
    if (!first_byte_ns_ && seconds_since(trigger_ns_) > double(options_.first_byte_timeout.count()))
      return fail(
          Errc::kIo,
          "no GPU core dump began within " + std::to_string(options_.first_byte_timeout.count()) +
              " s of the trigger (is the driver's dump thread blocked, or the target stopped?)");
    if (first_byte_ns_ && seconds_since(last_data_ns) > double(options_.idle_timeout.count()))
      return fail(Errc::kIo, "the GPU core dump stalled: no data for " +
                                 std::to_string(options_.idle_timeout.count()) + " s after " +
                                 std::to_string(bytes_) + " bytes");
    if (seconds_since(trigger_ns_) > double(options_.total_timeout.count()))
      return fail(Errc::kIo, "the GPU core dump took longer than " +
                                 std::to_string(options_.total_timeout.count()) + " s");
  }
  eof_ns_ = monotonic_ns();
  if (bar) bar->finish();
  format_ = shape.format();
  if (bytes_ == 0) return fail(Errc::kIo, "the GPU core dump of " + who + " is empty");
  if (const uint64_t declared = shape.declared_size(); declared && bytes_ < declared)
    return fail(Errc::kIo,
                "the GPU core dump of " + who + " ends after " + std::to_string(bytes_) +
                    " of the " + std::to_string(declared) +
                    " bytes its ELF header declares: cut off" +
                    (same_process_alive(options_.pid, start_time_) ? "" : " (the target exited)"));
  return {};
}

Status CudaCoredumpSource::read(bundle::BundleWriter& w, bool show_progress) {
  Fifo fifo;
  const bool in_target = method_ != "cuda-gdb";  // the driver's or the CUPTI library's thread writes
  const std::string file_name = method_ == "pipe-trigger"     ? arming_.file_name
                                : method_ == "cupti-copy-out" ? arming_.cupti_output_name
                                                              : "mlfx-cuda-gdb." + std::to_string(options_.pid);
  // cuda-gdb writes as root, the driver and the CUPTI library as the target's user.
  MLFX_TRY(fifo.make(options_.dir, file_name, in_target ? target_uid_ : ::geteuid()));
  MLFX_TRY(w.begin_stream(
      "gpu-core", "cuda-coredump:pid " + std::to_string(options_.pid) + " (" + method_ + ")"));
  pid_t helper = 0;
  trigger_ns_ = monotonic_ns();
  if (method_ == "pipe-trigger") {
    MLFX_TRY(trigger_pipe(arming_.pipe_name, "its CUDA driver"));
  } else if (method_ == "cupti-copy-out") {
    MLFX_TRY(trigger_pipe(arming_.cupti_trigger_name, "its CUPTI library"));
  } else {
    MLFX_ASSIGN(helper, start_cuda_gdb(fifo.path));
  }
  Status streamed = stream_dump(fifo, w, show_progress, helper);
  if (!streamed && in_target && same_process_alive(options_.pid, start_time_))
    fifo.block();
  if (helper > 0) {
    // cuda-gdb detaches on its own; one that hangs is killed, and a target it left stopped is
    // continued (the kernel detaches a dead tracer's tracees but may leave them stopped).
    int status = 0;
    const int64_t until = monotonic_ns() + 30'000'000'000;
    while (::waitpid(helper, &status, WNOHANG) == 0) {
      if (!streamed || monotonic_ns() > until) {
        ::kill(helper, SIGKILL);
        ::waitpid(helper, &status, 0);
        if (auto st = stat_of(options_.pid); st && (st->state == 'T' || st->state == 't'))
          ::kill(options_.pid, SIGCONT);
        break;
      }
      ::usleep(20'000);
    }
    if (streamed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
      streamed = fail(Errc::kIo, "cuda-gdb exited with status " + std::to_string(status) +
                                     " after writing the dump");
  }
  if (!streamed)
    return fail(std::move(streamed).error().context(
        method_ == "cuda-gdb" ? "through cuda-gdb" : "through the driver's pipe"));
  survived_ = same_process_alive(options_.pid, start_time_);
  if (!survived_)
    return fail(Errc::kIo, "pid " + std::to_string(options_.pid) +
                               " did not survive its GPU core dump (" + std::to_string(bytes_) +
                               " bytes received)");
  complete_ = true;
  return {};
}

void CudaCoredumpSource::stream_sealed(const bundle::StreamInfo& stream) {
  sha256_ = stream.sha256;
}

std::string CudaCoredumpSource::context_stream_source() const {
  return "cuda-coredump:pid " + std::to_string(options_.pid);
}

json::Json CudaCoredumpSource::manifest_context() const {
  return {{"gpu_method", method_}, {"gpu_dump_bytes", bytes_}, {"gpu_target_survived", survived_}};
}

json::Json CudaCoredumpSource::context() const {
  json::Json c = {
      {"pid", options_.pid},
      {"method", method_},
      {"arming", arming_.to_json()},
      {"generation_flags", arming_.flags},
      {"driver", nvidia_driver_facts(options_.nvidia_proc)},
      {"dump",
       {{"stream", "gpu-core"}, {"bytes", bytes_}, {"format", format_}, {"sha256", sha256_}}},
      {"timings",
       {{"trigger_to_first_byte_ms", ms(trigger_ns_, first_byte_ns_)},
        {"first_byte_to_eof_ms", ms(first_byte_ns_, eof_ns_)},
        {"trigger_to_eof_ms", ms(trigger_ns_, eof_ns_)}}},
      {"target",
       {{"survived", survived_}, {"start_time_ticks", start_time_}, {"uid", target_uid_}}},
      {"complete", complete_}};
  if (method_ == "cuda-gdb")
    c["cuda_gdb"] = {
        {"path", cuda_gdb_},
        {"argv", cuda_gdb_argv(cuda_gdb_, options_.pid,
                               options_.dir + "/mlfx-cuda-gdb." + std::to_string(options_.pid))}};
  return c;
}

json::Json CudaCoredumpSource::acquisition() const {
  return {{"source", "gpu"}, {"pid", options_.pid},          {"method", method_},
          {"bytes", bytes_}, {"target_survived", survived_}, {"complete", complete_}};
}

}  // namespace mlfx::agent::gpu
