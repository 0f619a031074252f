#include "process_capture.h"

#include <elf.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <climits>
#include <cmath>
#include <map>
#include <optional>
#include <tuple>

#include "arch.h"
#include "core_notes.h"
#include "elf_build_id.h"
#include "mlfx/base/clock.h"
#include "proc_maps.h"
#include "procfs.h"
#include "thread_freezer.h"

namespace mlfx::agent::process {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kPfKthread = 0x00200000;  // PF_KTHREAD in the task flags of /proc/PID/stat

// Readable mappings that are not read, as the kernel's core dumps (and gdb's gcore) leave
// them out, by smaps VmFlags. The first rule that matches gives the reason recorded.
struct SkipRule {
  const char* vm_flag;
  const char* reason;
};
constexpr SkipRule kSkipRules[] = {
    {"io", "not read: device memory (VM_IO); reading it can have side effects"},
    {"dd", "not read: marked MADV_DONTDUMP (VM_DONTDUMP) by the process, as kernel cores and gcore do"},
};
// The kernel's special mappings are always attempted, as in kernel cores; what fails to
// read ([vvar] pages) is zero-filled and listed with the reason.
constexpr std::string_view kAlwaysRead[] = {"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"};

const char* skip_reason(const MapEntry& m) {
  if (!m.readable()) return nullptr;
  for (auto special : kAlwaysRead)
    if (m.path == special) return nullptr;
  for (const auto& rule : kSkipRules)
    if (m.has_vm_flag(rule.vm_flag)) return rule.reason;
  return nullptr;
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::round(std::chrono::duration<double, std::milli>(b - a).count() * 1000) / 1000;
}

// How a traced process that is gone ended, from the tracer's wait (which also releases it to
// its parent). Its threads may take a moment to finish exiting.
std::string how_target_ended(pid_t pid) {
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < deadline) {
    int status = 0;
    pid_t r = waitpid(pid, &status, __WALL | WNOHANG);
    if (r == pid && WIFSIGNALED(status)) {
      const char* name = sigabbrev_np(WTERMSIG(status));
      return "the process was killed by signal " + std::to_string(WTERMSIG(status)) +
             (name ? std::string(" (SIG") + name + ")" : std::string()) + " during the capture";
    }
    if (r == pid && WIFEXITED(status))
      return "the process exited (status " + std::to_string(WEXITSTATUS(status)) + ") during the capture";
    if (r < 0 && errno != EINTR) break;  // not ours to wait for any more
    timespec ts{0, 2'000'000};
    nanosleep(&ts, nullptr);
  }
  return "the process exited during the capture";
}

// The target's memory. process_vm_readv copies pages straight into our buffer: a third faster
// than /proc/PID/mem, which copies every page twice (through a kernel bounce page), and both
// make the same ptrace access check. Where it refuses a page, /proc/PID/mem decides (pread;
// lseek + read above 2^63, where pread refuses the offset), and its error is the reason
// recorded for the page. A process that exits under us (SIGKILL reaches a traced process too)
// shows as ESRCH from process_vm_readv and end of data from /proc/PID/mem: its memory is gone.
class ProcMemReader : public MemoryReader {
 public:
  ProcMemReader(pid_t pid, const File& mem) : pid_(pid), mem_(mem) {}
  Result<size_t> read(uint64_t addr, uint8_t* buf, size_t len) override {
    if (vm_readv_) {
      struct iovec local {buf, len}, remote{reinterpret_cast<void*>(addr), len};
      ssize_t n = process_vm_readv(pid_, &local, 1, &remote, 1, 0);
      if (n > 0) return static_cast<size_t>(n);
      if (n < 0 && errno == ESRCH) {
        gone_ = true;
        return fail(Errc::kIo, errno_name(ESRCH));
      }
      if (n < 0 && (errno == ENOSYS || errno == EPERM)) vm_readv_ = false;  // kernel or policy
    }
    while (true) {
      ssize_t n;
      if (addr <= static_cast<uint64_t>(LLONG_MAX)) {
        n = ::pread(mem_.fd(), buf, len, static_cast<off_t>(addr));
      } else {
        if (::lseek(mem_.fd(), static_cast<off_t>(addr), SEEK_SET) == -1 && errno != 0)
          return fail(Errc::kIo, errno_name(errno));
        n = ::read(mem_.fd(), buf, len);
      }
      if (n > 0) return static_cast<size_t>(n);
      if (n == 0 || errno == ESRCH) {  // the address space is gone
        gone_ = true;
        return fail(Errc::kIo, "end of data");
      }
      if (errno == EINTR) continue;
      return fail(Errc::kIo, errno_name(errno));
    }
  }
  bool gone() override { return gone_; }
  std::string gone_reason() override { return how_target_ended(pid_); }

 private:
  pid_t pid_;
  const File& mem_;
  bool vm_readv_ = true;
  bool gone_ = false;
};

std::vector<std::string> split_nul(const std::string& s) {
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find('\0', pos);
    if (end == std::string::npos) end = s.size();
    parts.push_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return parts;
}

uint64_t hex_field(const std::string& status, const char* key) {
  auto v = status_field(status, key);
  return v ? std::strtoull(v->c_str(), nullptr, 16) : 0;
}

uint32_t first_id(const std::string& status, const char* key) {
  auto v = status_field(status, key);
  return v ? static_cast<uint32_t>(std::strtoul(v->c_str(), nullptr, 10)) : 0;
}

std::string read_link(const std::string& path) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink(path.c_str(), buf, PATH_MAX);
  return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
}

std::string trim_newline(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// No process any more, or only its zombie: nothing left to read.
bool target_is_gone(pid_t pid) {
  auto text = read_proc_file(proc_path(pid, "stat"), 4096);
  if (!text) return true;  // /proc/PID/stat is readable by anyone while the process exists
  auto st = parse_proc_stat(*text);
  return st && (st->state == 'Z' || st->state == 'X');
}

}  // namespace

struct ProcessCapture::State {
  ProcessCaptureOptions options;
  pid_t pid = 0;
  std::optional<ThreadFreezer> freezer;
  File mem;

  ProcStat stat_before, stat;
  std::string exe;
  std::vector<std::string> cmdline;
  std::string auxv;
  uint32_t uid = 0, gid = 0;
  struct ThreadFacts {
    pid_t tid = 0;
    std::string comm;
    int pending_signal = 0;
  };
  std::vector<ThreadFacts> threads;
  std::vector<MapEntry> maps;
  std::vector<std::optional<std::string>> build_ids;  // per mapping
  std::vector<std::string> not_dumped;                // per mapping: why a readable one is left out
  std::optional<ElfCoreLayout> layout;
  EmitStats stats;
  utsname uts{};
  uint64_t page_size = 0;
  std::string start_utc;

  Clock::time_point t_start, t_frozen, t_inspected, t_captured, t_thawed, t_sealed;
  std::string frozen_utc, thawed_utc;
  bool core_written = false, thawed = false, core_sealed = false;

  Status check_target();
  Status inspect();
  void read_build_ids();
};

// The GNU build-id of every mapped file, once per file. Read after the thaw: the core does not
// need them, only the context, and opening a hundred files would lengthen the freeze.
void ProcessCapture::State::read_build_ids() { build_ids = mapped_build_ids(pid, maps); }

Status ProcessCapture::State::check_target() {
  const std::string who = "pid " + std::to_string(pid);
  if (pid <= 0) return fail(Errc::kInvalidArgument, "--pid must be a positive process id");
  if (pid == getpid()) return fail(Errc::kInvalidArgument, "mlfx-agent cannot capture itself");
  auto text = read_proc_file(proc_path(pid, "stat"), 4096);
  if (!text) {
    if (text.error().code() == Errc::kNotFound)
      return fail(Errc::kNotFound, "no such process: " + who + " (nothing at /proc/" +
                                       std::to_string(pid) + "); check the id with 'ps'");
    return fail(std::move(text).error());
  }
  MLFX_ASSIGN(stat_before, parse_proc_stat(*text));
  if (stat_before.state == 'Z' || stat_before.state == 'X')
    return fail(Errc::kInvalidArgument, who + " (" + stat_before.comm +
                                            ") is a zombie: it has exited and has no memory left");
  if (stat_before.flags & kPfKthread)
    return fail(Errc::kInvalidArgument, who + " (" + stat_before.comm +
                                            ") is a kernel thread: it has no user memory to capture");
  MLFX_ASSIGN(std::string status, read_proc_file(proc_path(pid, "status"), 1 << 20));
  auto tgid = status_field(status, "Tgid");
  if (tgid && *tgid != std::to_string(pid))
    return fail(Errc::kInvalidArgument, who + " is a thread of process " + *tgid +
                                            "; capture the process: --pid " + *tgid);
  return {};
}

Status ProcessCapture::State::inspect() {
  MLFX_TRY(freezer->read_registers());
  auto m = File::open_read(proc_path(pid, "mem"));
  if (!m) {
    if (m.error().code() == Errc::kIo || m.error().code() == Errc::kPermission)
      return fail(Errc::kPermission, "cannot open " + proc_path(pid, "mem") + ": " +
                                         m.error().message() + "; " + ptrace_refused_advice(pid));
    return fail(std::move(m).error());
  }
  mem = std::move(*m);
  MLFX_ASSIGN(std::string stat_text, read_proc_file(proc_path(pid, "stat"), 4096));
  MLFX_ASSIGN(stat, parse_proc_stat(stat_text));
  MLFX_ASSIGN(std::string status, read_proc_file(proc_path(pid, "status"), 1 << 20));
  uid = first_id(status, "Uid");
  gid = first_id(status, "Gid");
  exe = read_link(proc_path(pid, "exe"));
  MLFX_ASSIGN(std::string cmd, read_proc_file(proc_path(pid, "cmdline"), 1 << 20));
  cmdline = split_nul(cmd);
  MLFX_ASSIGN(auxv, read_proc_file(proc_path(pid, "auxv"), 1 << 20));
  MLFX_ASSIGN(maps, read_proc_smaps(pid));
  if (uname(&uts) != 0) return fail(Errc::kIo, "uname: " + errno_name(errno));
  page_size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  static const long hz = sysconf(_SC_CLK_TCK) > 0 ? sysconf(_SC_CLK_TCK) : 100;
  if (auto btime = boot_time_seconds())
    start_utc = utc_from_micros(static_cast<int64_t>(*btime) * 1000000 +
                                static_cast<int64_t>(stat.starttime * 1000000 / static_cast<uint64_t>(hz)));

  ProcessNoteInfo proc;
  proc.pid = pid;
  proc.ppid = stat.ppid;
  proc.pgrp = stat.pgrp;
  proc.sid = stat.session;
  proc.uid = uid;
  proc.gid = gid;
  proc.state = stat_before.state;  // frozen, every thread reads 't'
  proc.nice = stat.nice;
  proc.flags = stat.flags;
  proc.cutime = static_cast<uint64_t>(std::max<int64_t>(0, stat.cutime));
  proc.cstime = static_cast<uint64_t>(std::max<int64_t>(0, stat.cstime));
  proc.comm = stat.comm;
  for (size_t i = 0; i < cmdline.size(); ++i) proc.args += (i ? " " : "") + cmdline[i];

  std::vector<ThreadNoteInfo> thread_notes;
  for (const FrozenThread& t : freezer->threads()) {
    ThreadNoteInfo n;
    n.thread = &t;
    if (auto s = read_proc_file(task_path(pid, t.tid, "stat"), 4096))
      if (auto st = parse_proc_stat(*s)) n.utime = st->utime, n.stime = st->stime;
    if (auto s = read_proc_file(task_path(pid, t.tid, "status"), 1 << 20)) {
      n.sigpend = hex_field(*s, "SigPnd");
      n.sighold = hex_field(*s, "SigBlk");
    }
    thread_notes.push_back(n);
    std::string comm;
    if (auto c = read_proc_file(task_path(pid, t.tid, "comm"), 4096)) comm = trim_newline(*c);
    threads.push_back({t.tid, std::move(comm), t.pending_signal});
  }

  // Segments: every readable mapping is read, except what kSkipRules leaves out.
  std::vector<CoreSegment> segments;
  not_dumped.assign(maps.size(), std::string());
  for (size_t i = 0; i < maps.size(); ++i) {
    const MapEntry& e = maps[i];
    CoreSegment s;
    s.vaddr = e.start;
    s.memsz = e.size();
    s.flags = (e.readable() ? PF_R : 0) | (e.writable() ? PF_W : 0) | (e.executable() ? PF_X : 0);
    s.filesz = e.readable() ? e.size() : 0;
    if (const char* reason = skip_reason(e)) {
      not_dumped[i] = reason;
      s.filesz = 0;
    }
    segments.push_back(s);
  }
  for (size_t i = 0; i < maps.size(); ++i)
    if (!not_dumped[i].empty())
      stats.unreadable.push_back({maps[i].start, maps[i].end, not_dumped[i]});

  auto notes = build_core_notes(proc, thread_notes, auxv, maps, page_size);
  MLFX_ASSIGN(ElfCoreLayout l, ElfCoreLayout::plan(host_arch().elf_machine, std::move(notes), segments, page_size));
  layout = std::move(l);
  return {};
}

ProcessCapture::ProcessCapture(std::unique_ptr<State> s) : s_(std::move(s)) {}
ProcessCapture::ProcessCapture(ProcessCapture&&) noexcept = default;
ProcessCapture& ProcessCapture::operator=(ProcessCapture&&) noexcept = default;
ProcessCapture::~ProcessCapture() {
  if (s_) (void)thaw();
}

Result<ProcessCapture> ProcessCapture::freeze(const ProcessCaptureOptions& options) {
  auto s = std::make_unique<State>();
  s->options = options;
  s->pid = options.pid;
  MLFX_TRY(s->check_target());
  s->t_start = Clock::now();
  auto f = options.freeze_threads ? options.freeze_threads(s->pid)
                                  : ThreadFreezer::freeze(s->pid, {options.stop_timeout});
  if (!f) {
    if (f.error().code() == Errc::kNotFound)
      return fail(Errc::kNotFound, "pid " + std::to_string(s->pid) + " exited before it could be frozen");
    return fail(std::move(f).error());
  }
  s->freezer.emplace(std::move(*f));
  s->t_frozen = Clock::now();
  s->frozen_utc = utc_timestamp();
  ProcessCapture cap(std::move(s));  // from here on, its destructor thaws on failure
  if (auto st = cap.s_->inspect(); !st) {
    if (target_is_gone(cap.s_->pid))
      return fail(Errc::kNotFound, "pid " + std::to_string(cap.s_->pid) +
                                       " exited while it was being inspected, before any memory was read; "
                                       "nothing was captured");
    return fail(std::move(st).error());
  }
  cap.s_->t_inspected = Clock::now();
  return cap;
}

const ElfCoreLayout& ProcessCapture::layout() const { return *s_->layout; }
const EmitStats& ProcessCapture::stats() const { return s_->stats; }

namespace {

// Passes the core on to `inner`, and stops at the next block once `cancel` is set.
class CancellableSink : public CoreSink {
 public:
  CancellableSink(CoreSink& inner, const std::atomic<bool>* cancel) : inner_(inner), cancel_(cancel) {}
  Result<std::span<uint8_t>> buffer(size_t max) override {
    if (cancel_ && cancel_->load()) return fail(Errc::kIo, "interrupted; the target was released");
    return inner_.buffer(max);
  }
  Status commit(size_t n) override { return inner_.commit(n); }

 private:
  CoreSink& inner_;
  const std::atomic<bool>* cancel_;
};

}  // namespace

Status ProcessCapture::write_core(CoreSink& sink, Progress* progress) {
  State& s = *s_;
  if (s.thawed) return fail(Errc::kInvalidArgument, "the target was thawed before its core was written");
  ProcMemReader reader(s.pid, s.mem);
  CancellableSink cancellable(sink, s.options.cancel);
  MLFX_TRY(s.layout->emit(reader, cancellable, s.stats, progress));
  s.t_captured = Clock::now();
  s.core_written = true;
  return {};
}

Status ProcessCapture::thaw() {
  State& s = *s_;
  if (s.thawed) return {};
  s.thawed = true;
  s.mem = File();
  Status st = s.freezer ? s.freezer->thaw() : Status{};
  s.t_thawed = Clock::now();
  s.thawed_utc = utc_timestamp();
  s.read_build_ids();
  return st;
}

void ProcessCapture::note_core_sealed() {
  s_->t_sealed = Clock::now();
  s_->core_sealed = true;
}

json::Json ProcessCapture::summary() const {
  const State& s = *s_;
  return {{"source", "process"},
          {"pid", s.pid},
          {"comm", s.stat.comm},
          {"exe", s.exe},
          {"architecture", host_arch().name},
          {"kernel_release", s.uts.release},
          {"threads", s.threads.size()},
          {"mappings", s.maps.size()},
          {"process_start_utc", s.start_utc},
          {"frozen_utc", s.frozen_utc},
          {"core_size", s.layout->file_size()}};
}

json::Json ProcessCapture::context() const {
  const State& s = *s_;
  json::Json threads = json::Json::array();
  for (const auto& t : s.threads)
    threads.push_back({{"tid", t.tid}, {"comm", t.comm}, {"pending_signal", t.pending_signal}});
  json::Json maps = json::Json::array();
  for (size_t i = 0; i < s.maps.size(); ++i) {
    const MapEntry& m = s.maps[i];
    char dev[32];
    std::snprintf(dev, sizeof dev, "%02x:%02x", m.dev_major, m.dev_minor);
    json::Json j = {{"start", m.start}, {"end", m.end}, {"perms", m.perms}, {"offset", m.offset},
                    {"dev", dev}, {"inode", m.inode}, {"path", m.path},
                    {"vm_flags", m.vm_flags}, {"dumped", s.layout->segments()[i].filesz != 0}};
    if (i < s.build_ids.size() && s.build_ids[i]) j["build_id"] = *s.build_ids[i];
    maps.push_back(std::move(j));
  }
  json::Json unreadable = json::Json::array();
  for (const auto& u : s.stats.unreadable)
    unreadable.push_back({{"start", u.start}, {"end", u.end}, {"reason", u.reason}});
  return {
      {"format", "mlfx.process-context/1"},
      {"source", "process"},
      {"architecture", host_arch().name},
      {"kernel", {{"sysname", s.uts.sysname}, {"release", s.uts.release}, {"version", s.uts.version},
                  {"machine", s.uts.machine}}},
      {"page_size", s.page_size},
      {"process", {{"pid", s.pid}, {"ppid", s.stat.ppid}, {"comm", s.stat.comm}, {"exe", s.exe},
                   {"cmdline", s.cmdline}, {"uid", s.uid}, {"gid", s.gid},
                   {"state_before_freeze", std::string(1, s.stat_before.state)},
                   {"start_time_utc", s.start_utc}, {"start_time_ticks", s.stat.starttime}}},
      {"threads", threads},
      {"mappings", maps},
      {"core", {{"stream", "core"}, {"size", s.layout->file_size()}, {"notes", s.layout->notes().size()},
                {"segments", s.layout->segments().size()}, {"elf_machine", host_arch().elf_machine}}},
      {"timings", {{"freeze_ms", ms_between(s.t_start, s.t_frozen)},
                   {"inspect_ms", ms_between(s.t_frozen, s.t_inspected)},
                   {"capture_ms", s.core_written ? ms_between(s.t_inspected, s.t_captured) : 0.0},
                   {"thaw_ms", s.thawed && s.core_written ? ms_between(s.t_captured, s.t_thawed) : 0.0},
                   {"frozen_ms", s.thawed ? ms_between(s.t_start, s.t_thawed) : 0.0},
                   // hashing and encryption of what was read but not yet sealed at the thaw
                   {"sealed_after_thaw_ms", s.thawed && s.core_sealed ? ms_between(s.t_thawed, s.t_sealed) : 0.0},
                   {"frozen_utc", s.frozen_utc},
                   {"thawed_utc", s.thawed_utc}}},
      {"bytes", {{"read", s.stats.bytes_read}, {"zero_filled", s.stats.bytes_zero_filled},
                 {"not_read_target_exited", s.stats.bytes_lost}, {"core", s.layout->file_size()}}},
      {"unreadable", unreadable},
      {"complete", !s.stats.source_gone},
      {"target_exit", target_exit()},
  };
}

json::Json ProcessCapture::target_exit() const {
  const EmitStats& st = s_->stats;
  if (!st.source_gone) return nullptr;
  return {{"during", "capture"},
          {"how", st.gone_reason},
          {"at_address", st.gone_at},
          {"bytes_read_before", st.bytes_read},
          {"bytes_not_read", st.bytes_lost},
          {"note", "the core holds zeros where memory could not be read after the exit; "
                   "the capture is partial"}};
}

json::Json ProcessCapture::completeness() const {
  const EmitStats& st = s_->stats;
  json::Json j = {{"capture_complete", !st.source_gone}};
  if (st.source_gone) {
    j["target_exited_during_capture"] = st.gone_reason;
    j["bytes_not_read"] = st.bytes_lost;
  }
  return j;
}

json::Json ProcessCapture::acquisition() const {
  const State& s = *s_;
  const json::Json ctx = context();
  json::Json a = {{"source", "process"},
                  {"method", "PTRACE_SEIZE + PTRACE_INTERRUPT of every thread, memory read with "
                             "process_vm_readv (/proc/PID/mem for pages it refuses) into an ELF core"},
                  {"pid", s.pid},
                  {"comm", s.stat.comm},
                  {"threads", s.threads.size()},
                  {"mappings", s.maps.size()},
                  {"unreadable_ranges", s.stats.unreadable.size()}};
  for (const auto& [k, v] : ctx["timings"].items()) a[k] = v;
  a["bytes_read"] = s.stats.bytes_read;
  a["bytes_zero_filled"] = s.stats.bytes_zero_filled;
  a["core_size"] = s.layout->file_size();
  // A partial capture says so in the signed custody chain, not only in the context stream.
  a["complete"] = !s.stats.source_gone;
  if (s.stats.source_gone) a["target_exit"] = target_exit();
  return a;
}

Result<json::Json> capture_process_core(const ProcessCaptureOptions& options, File& out) {
  MLFX_ASSIGN(ProcessCapture cap, ProcessCapture::freeze(options));
  auto st = cap.write_core([&out](ByteView b) { return out.write_all(b); }, nullptr);
  if (!st) return fail(std::move(st).error().context("writing the core of pid " + std::to_string(options.pid)));
  MLFX_TRY(cap.thaw());
  return cap.context();
}

}  // namespace mlfx::agent::process
