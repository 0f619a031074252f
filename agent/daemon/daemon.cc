#include "daemon/daemon.h"

#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "bpf/bpf_triggers.h"
#include "capture/gpu/cuda_coredump_source.h"
#include "capture/physical/kmod_source.h"
#include "capture/physical/lime_source.h"
#include "capture/process/procfs.h"
#include "capture/process/process_source.h"
#include "capture/spooled_capture.h"
#include "upload/intake_target.h"
#include "upload/lab_requests.h"
#include "upload/uploader.h"
#include "daemon/capture_budget.h"
#include "daemon/control.h"
#include "daemon/pressure.h"
#include "daemon/ptrace_holder.h"
#include "daemon/targets.h"
#include "mlfx/base/clock.h"
#include "mlfx/bundle/sealing_keys.h"

namespace mlfx::agent::daemon {
namespace {

constexpr size_t kRecentTriggers = 64;      // kept for status
constexpr size_t kMaxQueuedCaptures = 8;    // admitted captures waiting for the capture thread
constexpr int kRescanSeconds = 30;          // /proc read again for targets the exec events missed
constexpr int kRescanSecondsWithoutExecEvents = 2;  // without eBPF no exec is reported
constexpr int64_t kEvidenceWaitNs = 50'000'000;
constexpr int64_t kForeignTracerWaitNs = 5'000'000'000;  // for a tracer that holds a target to let go  // a held fatal signal waits this long for its eBPF record

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : std::to_string(sig);
}

// The eBPF event kinds a target's triggers need (exit always: the daemon forgets it then).
uint32_t bpf_mask(const std::set<TriggerKind>& kinds) {
  uint32_t mask = MLFX_EV_EXIT;
  if (kinds.count(TriggerKind::kFatalSignal)) mask |= MLFX_EV_FATAL_SIGNAL;
  if (kinds.count(TriggerKind::kOomKill)) mask |= MLFX_EV_OOM_KILL;
  if (kinds.count(TriggerKind::kPtraceAttach)) mask |= MLFX_EV_PTRACE_ATTACH;
  if (kinds.count(TriggerKind::kMemoryWrite)) mask |= MLFX_EV_MEMORY_WRITE;
  if (kinds.count(TriggerKind::kLibraryInjection)) mask |= MLFX_EV_EXEC_MAPPING;
  return mask;
}

std::string fixed_string(const char* s, size_t n) { return std::string(s, strnlen(s, n)); }

// Kernel return addresses to "function+0xoffset" from /proc/kallsyms, read once per call:
// nothing of the symbol table is kept in memory between triggers.
json::Json symbolize(const std::vector<uint64_t>& addresses) {
  json::Json out = json::Json::array();
  if (addresses.empty()) return out;
  std::vector<std::pair<uint64_t, std::string>> best(addresses.size(), {0, ""});
  std::ifstream in("/proc/kallsyms");
  std::string line;
  while (std::getline(in, line)) {
    char* end = nullptr;
    uint64_t a = std::strtoull(line.c_str(), &end, 16);
    if (!a || !end || end[0] != ' ' || (end[1] != 't' && end[1] != 'T')) continue;
    for (size_t i = 0; i < addresses.size(); ++i)
      if (a <= addresses[i] && a > best[i].first) best[i] = {a, line.substr(static_cast<size_t>(end - line.c_str()) + 3)};
  }
  for (size_t i = 0; i < addresses.size(); ++i) {
    const std::string name = best[i].second.substr(0, best[i].second.find_first_of(" \t"));
    // The agent's own eBPF program and the tracepoint that ran it are not the target's story.
    if (name.rfind("bpf_prog_", 0) == 0 || name.rfind("bpf_trace_run", 0) == 0 || name.rfind("__traceiter_", 0) == 0)
      continue;
    char off[32];
    std::snprintf(off, sizeof off, "+0x%llx", static_cast<unsigned long long>(addresses[i] - best[i].first));
    out.push_back(best[i].first ? name + off : hex_address(addresses[i]));
  }
  return out;
}

// Why an executable mapping of `path` looks injected, or "" when it does not: code from memory
// (memfd), from a file deleted after opening, or from a directory anyone may write to.
std::string injected_library_reason(const std::string& path) {
  if (path.empty()) return "the mapping was gone before the agent could see its file";
  if (path.rfind("/memfd:", 0) == 0) return "code mapped from memory (memfd_create)";
  if (path.size() > 10 && path.compare(path.size() - 10, 10, " (deleted)") == 0) return "code from a deleted file";
  for (const char* dir : {"/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/", "/run/shm/"})
    if (path.rfind(dir, 0) == 0) return std::string("code from a world-writable directory (") + dir + ")";
  return {};
}

// The file mapped at `address` in process `pid`, from /proc/PID/maps ("" when none).
std::string mapped_file(pid_t pid, uint64_t address) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    char* end = nullptr;
    const uint64_t start = std::strtoull(line.c_str(), &end, 16);
    if (!end || *end != '-') continue;
    const uint64_t stop = std::strtoull(end + 1, &end, 16);
    if (address < start || address >= stop) continue;
    // start-end perms offset dev inode path: the path is what follows the fifth field.
    size_t pos = 0;
    for (int field = 0; field < 5 && pos != std::string::npos; ++field) pos = line.find_first_not_of(' ', line.find(' ', pos));
    return pos == std::string::npos ? std::string() : line.substr(pos);
  }
  return {};
}

std::vector<uint64_t> kernel_stack(const mlfx_trigger_event& e) {
  std::vector<uint64_t> s;
  const int n = std::clamp(e.kstack_bytes / 8, 0, MLFX_KSTACK_DEPTH);
  for (int i = 0; i < n; ++i) s.push_back(e.kstack[i]);
  return s;
}

// What a target's CUDA error report says, as data: bounded strings and an integer, never
// interpreted (the target may say anything).
json::Json cuda_error_evidence(const json::Json& msg) {
  constexpr size_t kMaxField = 128;
  auto text = [&](const char* key) -> json::Json {
    if (!msg.contains(key) || !msg[key].is_string()) return nullptr;
    std::string s = msg[key].get<std::string>();
    if (s.size() > kMaxField) s.resize(kMaxField);
    return s;
  };
  json::Json code = msg.contains("code") && msg["code"].is_number_integer() ? msg["code"] : json::Json(nullptr);
  return {{"cuda_api", text("api")}, {"cuda_error", text("error")}, {"cuda_error_code", code}};
}

// A tiny sd_notify: READY=1 to systemd when it started us as Type=notify.
void notify_systemd(const char* state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const size_t len = std::min(strlen(path), sizeof a.sun_path - 1);
  memcpy(a.sun_path, path, len);
  if (a.sun_path[0] == '@') a.sun_path[0] = '\0';
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  (void)::sendto(fd, state, strlen(state), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&a),
                 static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
  ::close(fd);
}

}  // namespace

void block_daemon_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGHUP, SIGTERM, SIGINT}) sigaddset(&set, sig);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

// One trigger, from the event to its outcome.
struct TriggerRecord {
  uint64_t id = 0;
  TriggerKind kind = TriggerKind::kOnDemand;
  std::string target;  // the [[target]] name
  pid_t pid = 0;
  std::string comm;
  int64_t monotonic_ns = 0;
  std::string utc;
  json::Json evidence = json::Json::object();  // what happened, who did it
  std::vector<uint64_t> kernel_stack;          // return addresses; symbolized after the thaw
  std::vector<RuleSpec> rules;                  // the rules it set off within their budget
  std::string outcome = "pending";  // queued, captured, partial, failed, suppressed
  std::string detail;               // the bundle, or why not

  json::Json to_json() const {
    json::Json rule_names = json::Json::array();
    for (const RuleSpec& r : rules) rule_names.push_back(r.name);
    return {{"id", id}, {"kind", std::string(trigger_kind_name(kind))}, {"target", target}, {"pid", pid},
            {"comm", comm}, {"time", utc}, {"monotonic_ns", monotonic_ns}, {"evidence", evidence},
            {"rules", rule_names}, {"outcome", outcome}, {"detail", detail}};
  }
};

struct Armed {
  TargetProcess process;
  std::set<TriggerKind> kinds;
  bool held = false;
  std::string armed_at;
};

// What the eBPF program saw of a fatal signal, for the holder's capture of it.
struct SignalEvidence {
  int64_t ktime_ns = 0;
  json::Json fields;
  std::vector<uint64_t> kernel_stack;
};

struct Daemon::State {
  explicit State(Log& l) : log(l) {}
  Log& log;
  std::string started = utc_timestamp();

  // Owned by the main thread.
  File control, anomaly;
  std::optional<gid_t> control_gid;
  int epoll = -1, signals = -1, rescan_timer = -1, pressure_timer = -1;
  std::optional<bpf::BpfTriggers> bpf;
  std::vector<bpf::Hook> hooks;
  std::string bpf_unavailable;  // why there are no eBPF triggers at all
  std::map<int, std::pair<Peer, bool>> connections;  // fd -> (peer, anomaly socket)
  struct Pressure {
    PressureWatch watch;
    PressureThreshold threshold;
    std::set<pid_t> pids;  // the armed targets it covers
  };
  std::map<std::string, Pressure> pressure;  // by file and threshold
  bool stop = false;

  // Owned by the capture thread (the holder's jobs).
  std::optional<Spool> spool;

  std::unique_ptr<PtraceHolder> holder;
  std::atomic<bool> cancel{false};
  std::atomic<int64_t> capture_started_ns{0};

  std::mutex mu;  // guards everything below
  DaemonConfig config;
  std::shared_ptr<const bundle::SealingKeys> keys;
  std::map<pid_t, Armed> armed;
  std::deque<TriggerRecord> recent;
  CaptureBudget budget;
  uint64_t next_id = 1;
  size_t queued = 0;
  uint64_t captured = 0, failed = 0;
  std::map<std::pair<pid_t, int>, SignalEvidence> fatal_evidence;  // (tid, signal)
  std::condition_variable evidence_arrived;

  // ---- arming ----
  std::set<TriggerKind> kinds_for(const std::string& target) const;
  void arm(const TargetProcess& tp);
  void disarm(pid_t pid, const std::string& why);
  void rescan();
  Status reload();

  // ---- triggers ----
  // The target name and comm of t.pid, if it is (still) armed.
  bool name_target(TriggerRecord& t);
  void on_bpf_event(const mlfx_trigger_event& e);
  void fire(TriggerRecord t, int reply_fd);
  bool admit(TriggerRecord& t);  // under mu
  void finish(TriggerRecord& t, const Result<SpooledCapture>& r, int reply_fd);
  void on_fatal(const FatalSignal& f, const PtraceHolder::Stopped& stopped);
  using FreezeThreads = std::function<Result<process::ThreadFreezer>(pid_t)>;
  // `freeze`: how to freeze a process the holder holds (empty: ThreadFreezer::freeze).
  Result<SpooledCapture> capture(TriggerRecord& t, const FreezeThreads& freeze, int64_t frozen_ns);

  // ---- memory pressure (main thread) ----
  void watch_pressure(const TargetProcess& tp);
  void unwatch_pressure(pid_t pid);
  void update_pressure_timer();
  void sample_pressure();
  void on_pressure(int fd);
  void pressure_crossed(Pressure& p);

  // ---- shipping: its own thread, when [upload] is configured ----
  std::thread shipper;
  std::mutex ship_mu;
  std::condition_variable ship_wake;
  bool ship_stop = false, ship_now = false;
  void ship_loop();
  void kick_shipper();
  void on_lab_request(const LabRequest& r);

  // ---- sockets ----
  void accept(const File& listener, bool anomaly_socket);
  void on_message(int fd);
  json::Json status();
  void close_connection(int fd);
};

// ---------------------------------------------------------------- arming

std::set<TriggerKind> Daemon::State::kinds_for(const std::string& target) const {
  std::set<TriggerKind> kinds;
  for (const RuleSpec& r : config.rules)
    if (r.targets.empty() || std::count(r.targets.begin(), r.targets.end(), target))
      kinds.insert(r.on.begin(), r.on.end());
  return kinds;
}

void Daemon::State::arm(const TargetProcess& tp) {
  std::set<TriggerKind> kinds;
  std::set<int> signals;
  {
    std::lock_guard lock(mu);
    if (armed.count(tp.pid)) return;
    kinds = kinds_for(tp.target);
    for (const RuleSpec* r : config.rules_for(tp.target, TriggerKind::kFatalSignal))
      signals.insert(r->signals.begin(), r->signals.end());
  }
  json::Json fields = {{"pid", tp.pid}, {"target", tp.target}, {"comm", tp.facts.comm}, {"exe", tp.facts.exe}};
  if (bpf) {
    if (auto st = bpf->arm(tp.pid, bpf_mask(kinds)); !st) {
      log.warn("arm_failed", {{"pid", tp.pid}, {"target", tp.target}, {"error", st.error().message()}});
      if (st.error().code() == Errc::kNotFound) return;  // gone already
    }
  }
  bool held = false;
  if (!signals.empty()) {
    Status st = holder->hold(tp.pid, signals);
    held = static_cast<bool>(st);
    if (!st)
      log.warn("hold_failed", {{"pid", tp.pid}, {"target", tp.target}, {"error", st.error().message()},
                               {"consequence", "a fatal signal is seen by eBPF only; the process may be gone before it is captured"}});
  }
  json::Json names = json::Json::array();
  for (TriggerKind k : kinds) names.push_back(std::string(trigger_kind_name(k)));
  fields["triggers"] = names;
  fields["held"] = held;
  {
    std::lock_guard lock(mu);
    armed[tp.pid] = Armed{tp, kinds, held, utc_timestamp()};
  }
  log.info("armed", fields);
  if (kinds.count(TriggerKind::kMemoryPressure)) watch_pressure(tp);
}

void Daemon::State::watch_pressure(const TargetProcess& tp) {
  PressureThreshold threshold;
  {
    std::lock_guard lock(mu);
    auto rules = config.rules_for(tp.target, TriggerKind::kMemoryPressure);
    if (rules.empty()) return;
    threshold = rules.front()->pressure;  // the first rule's: one watch per cgroup and threshold
  }
  auto source = pressure_source_of(tp.pid);
  if (!source) {
    log.warn("pressure_unavailable", {{"pid", tp.pid}, {"target", tp.target}, {"error", source.error().message()}});
    return;
  }
  const std::string key = source->file + " " + std::to_string(threshold.stall.count()) + "/" +
                          std::to_string(threshold.window.count());
  auto it = pressure.find(key);
  if (it == pressure.end()) {
    auto w = PressureWatch::open(*source, threshold);
    if (!w) {
      log.warn("pressure_unavailable", {{"pid", tp.pid}, {"target", tp.target}, {"error", w.error().message()}});
      return;
    }
    if (!w->sampled()) {
      epoll_event ev{};
      ev.events = EPOLLPRI;
      ev.data.fd = w->fd();
      ::epoll_ctl(epoll, EPOLL_CTL_ADD, w->fd(), &ev);
    }
    log.info("pressure_watch", {{"file", source->file}, {"scope", source->scope}, {"mode", w->mode()},
                                {"stall_us", threshold.stall.count()}, {"window_us", threshold.window.count()}});
    it = pressure.emplace(key, Pressure{std::move(*w), threshold, {}}).first;
    update_pressure_timer();
  }
  it->second.pids.insert(tp.pid);
}

void Daemon::State::unwatch_pressure(pid_t pid) {
  for (auto it = pressure.begin(); it != pressure.end();) {
    it->second.pids.erase(pid);
    if (it->second.pids.empty()) {
      if (!it->second.watch.sampled()) ::epoll_ctl(epoll, EPOLL_CTL_DEL, it->second.watch.fd(), nullptr);
      it = pressure.erase(it);
    } else {
      ++it;
    }
  }
  update_pressure_timer();
}

void Daemon::State::update_pressure_timer() {
  // Sampled watches are read four times a window (the shortest one); none: the timer is off.
  int64_t period_ns = 0;
  for (const auto& [key, p] : pressure)
    if (p.watch.sampled()) {
      const int64_t quarter = std::chrono::nanoseconds(p.threshold.window).count() / 4;
      period_ns = period_ns ? std::min(period_ns, quarter) : quarter;
    }
  itimerspec t{};
  t.it_interval = t.it_value = {static_cast<time_t>(period_ns / 1'000'000'000), static_cast<long>(period_ns % 1'000'000'000)};
  ::timerfd_settime(pressure_timer, 0, &t, nullptr);
}

void Daemon::State::sample_pressure() {
  const int64_t now = monotonic_ns();
  for (auto& [key, p] : pressure)
    if (p.watch.sampled() && p.watch.sample(now)) pressure_crossed(p);
}

void Daemon::State::on_pressure(int fd) {
  for (auto& [key, p] : pressure)
    if (!p.watch.sampled() && p.watch.fd() == fd) return pressure_crossed(p);
}

void Daemon::State::pressure_crossed(Pressure& p) {
  {
    const int64_t now = monotonic_ns();
    json::Json ev = {{"psi_file", p.watch.source().file}, {"scope", p.watch.source().scope},
                     {"threshold", "some " + std::to_string(p.threshold.stall.count()) + " us stalled within " +
                                       std::to_string(p.threshold.window.count()) + " us"},
                     {"figures", p.watch.figures()}, {"mode", p.watch.mode()}};
    for (pid_t pid : std::set<pid_t>(p.pids)) {
      TriggerRecord t;
      t.kind = TriggerKind::kMemoryPressure;
      t.pid = pid;
      t.monotonic_ns = now;
      t.evidence = ev;
      if (name_target(t)) fire(std::move(t), -1);
    }
  }
}

void Daemon::State::disarm(pid_t pid, const std::string& why) {
  bool held = false;
  std::string target;
  {
    std::lock_guard lock(mu);
    auto it = armed.find(pid);
    if (it == armed.end()) return;
    held = it->second.held;
    target = it->second.process.target;
    armed.erase(it);
  }
  if (bpf) (void)bpf->disarm(pid);
  unwatch_pressure(pid);
  if (held && why != "exited") (void)holder->release(pid);
  log.info("disarmed", {{"pid", pid}, {"target", target}, {"why", why}});
}

void Daemon::State::rescan() {
  std::vector<TargetSpec> targets;
  {
    std::lock_guard lock(mu);
    targets = config.targets;
  }
  auto found = find_targets(targets, getpid());
  std::vector<std::pair<pid_t, std::string>> gone;
  {
    std::lock_guard lock(mu);
    for (const auto& [pid, a] : armed) {
      auto it = found.find(pid);
      if (it == found.end()) gone.emplace_back(pid, "no longer a target");
      else if (it->second.target != a.process.target) gone.emplace_back(pid, "now target " + it->second.target);
    }
  }
  for (const auto& [pid, why] : gone) disarm(pid, why);
  for (const auto& [pid, tp] : found) arm(tp);
}

Status Daemon::State::reload() {
  std::string path;
  {
    std::lock_guard lock(mu);
    path = config.path;
  }
  MLFX_ASSIGN(DaemonConfig next, load_config(path));
  MLFX_ASSIGN(bundle::SealingKeys new_keys, bundle::load_sealing_keys(next.agent.device_key, next.agent.recipients));
  std::vector<pid_t> all;
  {
    std::lock_guard lock(mu);
    bool spool_changed = next.spool.dir != config.spool.dir || next.spool.quota != config.spool.quota;
    config = std::move(next);
    keys = std::make_shared<const bundle::SealingKeys>(std::move(new_keys));
    budget.reset_counters();
    log.set_format(config.agent.log_format);
    for (const auto& [pid, a] : armed) all.push_back(pid);
    if (spool_changed) {
      holder->post([this, dir = config.spool.dir, quota = config.spool.quota](PtraceHolder::Jobs&) {
        auto s = Spool::open(dir, quota);
        if (s) spool.emplace(std::move(*s));
        else log.error("spool_failed", {{"spool", dir}, {"error", s.error().message()}});
      });
    }
  }
  // Rules may have changed what each target is armed for: arm everything again.
  for (pid_t pid : all) disarm(pid, "configuration reloaded");
  rescan();
  return {};
}

// ---------------------------------------------------------------- triggers

bool Daemon::State::name_target(TriggerRecord& t) {
  std::lock_guard lock(mu);
  auto a = armed.find(t.pid);
  if (a == armed.end()) return false;
  t.target = a->second.process.target;
  t.comm = a->second.process.facts.comm;
  return true;
}

bool Daemon::State::admit(TriggerRecord& t) {
  t.id = next_id++;
  t.utc = utc_timestamp();
  const auto now = CaptureBudget::Clock::now();
  json::Json decisions = json::Json::object();
  for (const RuleSpec* r : config.rules_for(t.target, t.kind)) {
    auto d = budget.admit(r->name + "/" + t.target, {r->max_captures, r->window, r->cooldown}, now);
    decisions[r->name] = d.allowed ? "admitted" : "suppressed: " + d.reason;
    if (d.allowed) t.rules.push_back(*r);
    else t.detail = d.reason;
  }
  t.evidence["rules"] = decisions;
  if (decisions.empty()) {
    t.outcome = "suppressed";
    t.detail = "no rule captures on " + std::string(trigger_kind_name(t.kind)) + " for target " + t.target;
  } else if (t.rules.empty()) {
    t.outcome = "suppressed";
  } else if (queued >= kMaxQueuedCaptures) {
    t.outcome = "suppressed";
    t.detail = std::to_string(queued) + " captures already waiting";
    t.rules.clear();
  } else {
    t.outcome = "queued";
    t.detail.clear();
  }
  recent.push_back(t);
  if (recent.size() > kRecentTriggers) recent.pop_front();
  return t.outcome == "queued";
}

void Daemon::State::fire(TriggerRecord t, int reply_fd) {
  bool go;
  {
    std::lock_guard lock(mu);
    go = admit(t);
    if (go) ++queued;
  }
  json::Json fields = t.to_json();
  fields.erase("evidence");
  if (!go) {
    // A storm is counted, not logged line by line: the first of each rule's run, then every 100th.
    if (budget.suppressed_total() % 100 == 1 || t.detail.rfind("no rule", 0) == 0) log.info("trigger_suppressed", fields);
    if (reply_fd >= 0) {
      (void)send_message(reply_fd, {{"ok", true}, {"trigger", t.to_json()}}, kMaxReply);
      close_connection(reply_fd);
    }
    return;
  }
  log.info("trigger", fields);
  holder->post([this, t = std::move(t), reply_fd](PtraceHolder::Jobs& jobs) mutable {
    {
      std::lock_guard lock(mu);
      --queued;
    }
    // A held target is stopped by its tracer, this thread, when the capture freezes it.
    std::function<Result<process::ThreadFreezer>(pid_t)> freeze;
    if (jobs.held(t.pid))
      freeze = [&jobs, held = t.pid](pid_t pid) {
        return pid == held ? jobs.freeze(pid) : process::ThreadFreezer::freeze(pid, {});
      };
    auto r = capture(t, freeze, 0);
    if (jobs.held(t.pid)) jobs.resume(t.pid);
    finish(t, r, reply_fd);
  });
}

void Daemon::State::finish(TriggerRecord& t, const Result<SpooledCapture>& r, int reply_fd) {
  if (r) {
    t.outcome = r->outcome.complete ? "captured" : "partial";
    t.detail = r->entry.path;
  } else {
    t.outcome = "failed";
    t.detail = r.error().message();
  }
  {
    std::lock_guard lock(mu);
    (r ? captured : failed) += 1;
    for (TriggerRecord& rec : recent)
      if (rec.id == t.id) {
        rec.outcome = t.outcome;
        rec.detail = t.detail;
        rec.evidence = t.evidence;
      }
  }
  json::Json fields = {{"id", t.id}, {"kind", std::string(trigger_kind_name(t.kind))}, {"pid", t.pid},
                       {"target", t.target}, {"outcome", t.outcome}, {"detail", t.detail}};
  if (r && !r->outcome.timeline.is_null()) {
    fields["bundle"] = r->outcome.manifest.bundle_id_hex();
    if (r->outcome.timeline.contains("trigger_to_frozen_ms"))
      fields["trigger_to_frozen_ms"] = r->outcome.timeline["trigger_to_frozen_ms"];
  }
  // The capture's buffers are free again: hand them back, so that the idle daemon is small again.
  malloc_trim(0);
  if (r) {
    log.info("captured", fields);
    kick_shipper();
  } else {
    log.error("capture_failed", fields);
  }
  if (reply_fd >= 0) {
    (void)send_message(reply_fd, {{"ok", true}, {"trigger", t.to_json()}}, kMaxReply);
    ::close(reply_fd);
  }
}

// The process (thread group) that ptrace-traces `pid` other than this agent, or 0.
pid_t foreign_tracer(pid_t pid) {
  auto status = process::read_proc_file(process::proc_path(pid, "status"), 1 << 16);
  auto tracer = status ? process::status_field(*status, "TracerPid") : std::nullopt;
  if (!tracer || *tracer == "0") return 0;
  auto tracer_status = process::read_proc_file("/proc/" + *tracer + "/status", 1 << 16);
  auto tgid = tracer_status ? process::status_field(*tracer_status, "Tgid") : std::nullopt;
  const pid_t group = tgid ? static_cast<pid_t>(std::stol(*tgid)) : static_cast<pid_t>(std::stol(*tracer));
  return group == getpid() ? 0 : group;
}

Result<SpooledCapture> Daemon::State::capture(TriggerRecord& t, const FreezeThreads& freeze, int64_t frozen_ns) {
  // Another tracer (the very process whose ptrace attach triggered this) holds the target: ptrace
  // allows one tracer, so wait a bounded while for it to let go, and say so.
  if (pid_t tracer = foreign_tracer(t.pid)) {
    const int64_t since = monotonic_ns();
    while (foreign_tracer(t.pid) && monotonic_ns() - since < kForeignTracerWaitNs) ::usleep(20'000);
    t.evidence["traced_by_at_capture"] = tracer;
    t.evidence["waited_for_tracer_ms"] = double(monotonic_ns() - since) / 1e6;
  }
  std::shared_ptr<const bundle::SealingKeys> k;
  std::string device_id, gpu_dir;
  {
    std::lock_guard lock(mu);
    k = keys;
    device_id = config.agent.device_id;
    gpu_dir = config.agent.gpu_dir;
  }
  if (!spool) return fail(Errc::kIo, "the spool is not open (see the log)");
  // The sources of every rule it set off, once each: GPU first, then process or whole memory.
  std::set<SourceKind> kinds;
  for (const RuleSpec& r : t.rules) kinds.insert(r.sources.begin(), r.sources.end());
  std::vector<std::unique_ptr<CaptureSource>> owned;
  json::Json skipped = json::Json::array();
  const bool has_process = kinds.count(SourceKind::kProcess);
  for (SourceKind kind : {SourceKind::kGpu, SourceKind::kProcess, SourceKind::kLime, SourceKind::kKmod}) {
    if (!kinds.count(kind)) continue;
    if (kind == SourceKind::kGpu) {
      // The driver writes the dump from a thread of the target: a target stopped at its fatal
      // signal cannot (the driver's own exception dump, CUDA_ENABLE_COREDUMP_ON_EXCEPTION, covers GPU faults).
      if (frozen_ns) {
        skipped.push_back({{"source", "gpu"}, {"why", "the target is stopped at its fatal signal: the CUDA driver's "
                                                      "dump thread inside it cannot write a dump"}});
        continue;
      }
      gpu::GpuCaptureOptions opt;
      opt.pid = t.pid;
      opt.dir = gpu_dir;
      opt.cancel = &cancel;
      auto s = gpu::CudaCoredumpSource::create(std::move(opt));
      if (s) owned.push_back(std::move(*s));
      else skipped.push_back({{"source", "gpu"}, {"why", s.error().message()}});
    } else if (kind == SourceKind::kProcess) {
      process::ProcessCaptureOptions opt;
      opt.pid = t.pid;
      opt.cancel = &cancel;
      opt.freeze_threads = freeze;
      owned.push_back(std::make_unique<process::ProcessSource>(opt));
    } else {
      physical::PhysicalOptions opt;
      // With the process source too, the process is frozen once, by it; the image still holds it.
      if (!has_process) opt.pids = {t.pid};
      opt.cancel = &cancel;
      opt.freeze_threads = freeze;
      if (kind == SourceKind::kLime) {
        MLFX_ASSIGN(auto s, physical::LimeSource::create(std::move(opt)));
        owned.push_back(std::move(s));
      } else {
        MLFX_ASSIGN(auto s, physical::KmodSource::create(std::move(opt)));
        owned.push_back(std::move(s));
      }
    }
  }
  if (!skipped.empty()) t.evidence["sources_skipped"] = skipped;
  if (owned.empty()) return fail(Errc::kUnsupported, "no source the rules name could be captured");
  std::vector<CaptureSource*> sources;
  for (auto& s : owned) sources.push_back(s.get());

  bundle::SealParams p;
  p.device_id = device_id;
  p.case_id = "trigger-" + std::to_string(t.id);
  p.note = std::string(trigger_kind_name(t.kind)) + " of " + t.target + " pid " + std::to_string(t.pid);
  p.command = "agent run";
  p.cancel = &cancel;
  const bool physical = kinds.count(SourceKind::kLime) || kinds.count(SourceKind::kKmod);
  if (physical) p.buffer_bytes = uint64_t{64} << 20;
  else if (auto avail = process::mem_available_bytes()) p.buffer_bytes = *avail / 4;
  json::Json rule_names = json::Json::array();
  for (const RuleSpec& r : t.rules) rule_names.push_back(r.name);
  p.tool_parameters = {{"trigger", t.id}, {"rules", rule_names}, {"pid", t.pid}};

  CaptureTrigger trigger;
  trigger.monotonic_ns = t.monotonic_ns;
  trigger.frozen_ns = frozen_ns;
  if (t.kind == TriggerKind::kFatalSignal && frozen_ns)
    trigger.thaw_note = "held at its fatal signal: stopped until the capture is complete, then it dies of the signal";
  trigger.evidence = t.to_json();
  trigger.evidence.erase("outcome");
  trigger.evidence.erase("detail");
  if (!t.kernel_stack.empty())
    trigger.complete_evidence = [&t](json::Json& evidence) {
      t.evidence["kernel_stack"] = symbolize(t.kernel_stack);
      evidence["evidence"]["kernel_stack"] = t.evidence["kernel_stack"];
    };
  cancel = false;
  capture_started_ns = monotonic_ns();
  auto r = capture_into_spool(*spool, "trigger-" + std::to_string(t.id) + "-" + std::to_string(t.pid) + ".mlfx",
                              sources, *k, std::move(p), false, &trigger);
  capture_started_ns = 0;
  return r;
}

void Daemon::State::on_fatal(const FatalSignal& f, const PtraceHolder::Stopped& stopped) {
  TriggerRecord t;
  t.kind = TriggerKind::kFatalSignal;
  t.pid = f.pid;
  t.monotonic_ns = f.stopped_ns;
  t.evidence = {{"signal", signal_name(f.signal)}, {"si_code", f.si_code}, {"tid", f.tid}, {"held", true},
                {"held_at_monotonic_ns", f.stopped_ns}};
  if (f.si_code > 0) t.evidence["fault_address"] = hex_address(f.fault_address);
  else t.evidence["sender_pid"] = f.sender;
  {
    std::unique_lock lock(mu);
    auto it = armed.find(f.pid);
    if (it != armed.end()) {
      t.target = it->second.process.target;
      t.comm = it->second.process.facts.comm;
    }
    // The eBPF record of the signal's generation: when it happened and the kernel's stack.
    if (bpf) {
      const auto key = std::make_pair(f.tid, f.signal);
      evidence_arrived.wait_for(lock, std::chrono::nanoseconds(kEvidenceWaitNs), [&] { return fatal_evidence.count(key) != 0; });
      if (auto e = fatal_evidence.find(key); e != fatal_evidence.end()) {
        t.monotonic_ns = e->second.ktime_ns;
        for (auto field = e->second.fields.begin(); field != e->second.fields.end(); ++field)
          t.evidence[field.key()] = *field;
        t.kernel_stack = e->second.kernel_stack;
        fatal_evidence.erase(e);
      }
    }
    if (!admit(t)) {
      json::Json fields = t.to_json();
      fields.erase("evidence");
      lock.unlock();
      log.info("trigger_suppressed", fields);
      return;  // the signal takes its course uncaptured
    }
  }
  json::Json fields = t.to_json();
  fields.erase("evidence");
  log.info("trigger", fields);
  auto held = [&stopped](pid_t pid) -> Result<process::ThreadFreezer> {
    return pid == stopped.pid() ? stopped.freezer() : process::ThreadFreezer::freeze(pid, {});
  };
  auto r = capture(t, held, f.frozen_ns);
  finish(t, r, -1);
}

void Daemon::State::on_bpf_event(const mlfx_trigger_event& e) {
  const pid_t pid = static_cast<pid_t>(e.target_tgid);
  if (e.kind == MLFX_EV_EXEC) {
    std::vector<TargetSpec> targets;
    bool known;
    {
      std::lock_guard lock(mu);
      targets = config.targets;
      known = armed.count(pid) != 0;
    }
    auto tp = target_of(targets, pid, getpid());
    if (tp && !known) arm(*tp);
    else if (!tp && known) disarm(pid, "exec'd into something that is not a target");
    return;
  }
  if (e.kind == MLFX_EV_EXIT) {
    disarm(pid, "exited");
    return;
  }
  json::Json ev = {{"actor_pid", e.actor_tgid}, {"actor_tid", e.actor_tid},
                   {"actor_comm", fixed_string(e.actor_comm, sizeof e.actor_comm)}, {"ktime_ns", e.ktime_ns}};
  TriggerRecord t;
  t.kernel_stack = kernel_stack(e);
  t.pid = pid;
  t.monotonic_ns = static_cast<int64_t>(e.ktime_ns);
  t.comm = fixed_string(e.target_comm, sizeof e.target_comm);
  bool held = false;
  std::vector<pid_t> module_targets;
  {
    std::lock_guard lock(mu);
    auto it = armed.find(pid);
    if (it != armed.end()) {
      t.target = it->second.process.target;
      held = it->second.held;
    }
    if (e.kind == MLFX_EV_MODULE_LOAD)
      for (const auto& [p, a] : armed)
        if (a.kinds.count(TriggerKind::kModuleLoad)) module_targets.push_back(p);
  }
  switch (e.kind) {
    case MLFX_EV_FATAL_SIGNAL:
      ev["signal"] = signal_name(e.signal);
      ev["si_code"] = e.si_code;
      if (held) {  // the holder captures it; this is its evidence
        std::lock_guard lock(mu);
        fatal_evidence[{static_cast<pid_t>(e.target_tid), e.signal}] = {static_cast<int64_t>(e.ktime_ns), ev, t.kernel_stack};
        if (fatal_evidence.size() > 256) fatal_evidence.erase(fatal_evidence.begin());
        evidence_arrived.notify_all();
        return;
      }
      t.kind = TriggerKind::kFatalSignal;
      ev["held"] = false;
      break;
    case MLFX_EV_OOM_KILL: t.kind = TriggerKind::kOomKill; break;
    case MLFX_EV_PTRACE_ATTACH:
      t.kind = TriggerKind::kPtraceAttach;
      ev["request"] = e.detail == 0x4206 ? "PTRACE_SEIZE" : e.detail == 16 ? "PTRACE_ATTACH" : std::to_string(e.detail);
      break;
    case MLFX_EV_EXEC_MAPPING: {
      // The mapping's file, by its address: the descriptor may be closed by now (ld.so closes it).
      const std::string file = mapped_file(pid, e.address);
      const std::string why = injected_library_reason(file);
      if (why.empty()) return;  // a library from where libraries live
      t.kind = TriggerKind::kLibraryInjection;
      ev["file"] = file;
      ev["why"] = why;
      ev["address"] = hex_address(e.address);
      ev["fd"] = e.detail;
      break;
    }
    case MLFX_EV_MEMORY_WRITE:
      t.kind = TriggerKind::kMemoryWrite;
      ev["vector"] = e.detail == MLFX_WRITE_PROC_PID_MEM ? "/proc/PID/mem" : "process_vm_writev";
      if (e.address) ev["address"] = hex_address(e.address);
      break;
    case MLFX_EV_MODULE_LOAD: {
      ev["module"] = fixed_string(e.name, sizeof e.name);
      for (pid_t p : module_targets) {
        TriggerRecord m = t;
        m.kind = TriggerKind::kModuleLoad;
        m.pid = p;
        m.evidence = ev;
        if (name_target(m)) fire(std::move(m), -1);
      }
      return;
    }
    default: return;
  }
  if (t.target.empty()) return;  // not (or no longer) an armed target
  t.evidence = std::move(ev);
  fire(std::move(t), -1);
}

// ---------------------------------------------------------------- shipping

void Daemon::State::kick_shipper() {
  std::lock_guard lock(ship_mu);
  ship_now = true;
  ship_wake.notify_all();
}

// Uploads the spool to the intake after every capture and every `poll` seconds, with backoff
// after failures; the bundles leave the spool only with the intake's verified receipt.
void Daemon::State::ship_loop() {
  std::optional<Spool> own;  // its own view of the spool: the capture thread has another
  std::optional<File> shipping_lock;
  std::optional<LabRequestPoller> requests;
  std::string requests_for;  // the settings `requests` was made with
  unsigned failures = 0;
  while (true) {
    std::optional<UploadSpec> up;
    std::optional<LabRequestSpec> lab;
    std::string dir, device_id;
    std::optional<uint64_t> quota;
    {
      std::lock_guard lock(mu);
      up = config.upload;
      lab = config.lab_requests;
      dir = config.spool.dir;
      quota = config.spool.quota;
      device_id = config.agent.device_id;
    }
    // Capture requests signed in the lab, fetched from the intake over the same mutual TLS.
    const std::string settings = up && lab ? up->server + "|" + dir + "|" + device_id + "|" +
                                                 std::to_string(lab->signers.size()) + "|" + std::to_string(lab->max_age.count())
                                           : std::string();
    if (settings != requests_for) {
      requests.reset();  // one poller per nonce store: the old one goes first
      requests_for = settings;
      if (!settings.empty()) {
        auto p = LabRequestPoller::create(*up, *lab, device_id, dir);
        if (p) requests.emplace(std::move(*p));
        else log.error("lab_requests_unavailable", {{"error", p.error().message()}});
      }
    }
    if (requests) {
      auto polled = requests->poll();
      if (!polled) {
        log.warn("lab_request_poll_failed", {{"error", polled.error().message()}});
      } else {
        for (const auto& r : *polled) {
          if (r) on_lab_request(*r);
          else log.warn("lab_request_refused", {{"error", r.error().message()}});
        }
      }
    }
    std::chrono::milliseconds wait = up ? std::chrono::milliseconds(up->poll) : std::chrono::milliseconds(60'000);
    if (up) {
      if (!own || own->dir() != dir) {
        shipping_lock.reset();
        auto s = Spool::open(dir, quota);
        if (s) own.emplace(std::move(*s));
        else log.error("ship_failed", {{"error", s.error().message()}});
      }
      if (own && !shipping_lock) {
        auto l = own->lock_shipping();
        if (l) shipping_lock.emplace(std::move(*l));
        else log.error("ship_failed", {{"error", l.error().message()}, {"consequence", "bundles stay in the spool"}});
      }
      auto target = intake_target({up->server, up->ca, up->cert, up->key, up->crl.value_or(""),
                                   up->intake_key.value_or(""), up->bandwidth.value_or(0),
                                   std::chrono::milliseconds(60'000), "[upload] server"});
      if (!target) {
        log.error("ship_failed", {{"error", target.error().message()}});
      } else if (own && shipping_lock) {
        PassReport pass = ship_pass(*own, *target, [&](const UploadOutcome& u) {
          json::Json fields = {{"bundle", u.bundle_id}, {"name", u.name}, {"result", u.result}, {"sent_bytes", u.sent_bytes}};
          if (!u.error.empty()) fields["error"] = u.error;
          log.write(u.result == "stored" || u.result == "duplicate" ? Level::kInfo : Level::kWarning, "uploaded", fields);
        });
        if (pass.ok) {
          failures = 0;
        } else {
          log.warn("ship_pass_failed", {{"error", pass.error}});
          wait = backoff_delay(failures++, std::chrono::seconds(1), std::chrono::seconds(300));
        }
      }
    }
    std::unique_lock lock(ship_mu);
    ship_wake.wait_for(lock, wait, [&] { return ship_stop || ship_now; });
    if (ship_stop) return;
    ship_now = false;
  }
}

// A verified lab request: the named target's processes (or the pid, if it is an armed target),
// each a trigger with the request, its requester and the signed request as evidence.
void Daemon::State::on_lab_request(const LabRequest& r) {
  json::Json signed_request = json::Json::parse(r.signed_request, nullptr, false);
  json::Json ev = {{"request_id", r.request_id}, {"requester", r.requester}, {"signer", r.signer_fingerprint},
                   {"reason", r.reason}, {"issued", r.issued_utc}, {"expires", r.expires_utc}, {"nonce", r.nonce},
                   {"signed_request", signed_request.is_discarded() ? json::Json(r.signed_request) : signed_request}};
  std::vector<pid_t> pids;
  {
    std::lock_guard lock(mu);
    for (const auto& [pid, a] : armed)
      if (r.pid ? pid == r.pid : a.process.target == r.target) pids.push_back(pid);
  }
  json::Json fields = {{"request_id", r.request_id}, {"requester", r.requester}, {"target", r.target}, {"pid", r.pid}};
  if (pids.empty()) {
    fields["error"] = r.pid ? "pid " + std::to_string(r.pid) + " is not an armed target"
                            : "target '" + r.target + "' has no running process";
    log.warn("lab_request_unmet", fields);
    return;
  }
  log.info("lab_request", fields);
  for (pid_t pid : pids) {
    TriggerRecord t;
    t.kind = TriggerKind::kLabRequest;
    t.pid = pid;
    t.monotonic_ns = monotonic_ns();
    t.evidence = ev;
    if (name_target(t)) fire(std::move(t), -1);
  }
}

// ---------------------------------------------------------------- sockets

void Daemon::State::close_connection(int fd) {
  ::epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nullptr);
  connections.erase(fd);
  ::close(fd);
}

void Daemon::State::accept(const File& listener, bool anomaly_socket) {
  while (true) {
    int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;
    auto peer = peer_of(fd);
    if (!peer || (!anomaly_socket && control_gid && !in_group(*peer, *control_gid)) ||
        (!anomaly_socket && !control_gid && peer->uid != 0)) {
      (void)send_message(fd, {{"ok", false}, {"error", "not allowed: the control socket is for root and the control_group"}});
      ::close(fd);
      continue;
    }
    make_room_for_replies(fd);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev);
    connections[fd] = {*peer, anomaly_socket};
    if (connections.size() > 256) close_connection(connections.begin()->first);  // a bound on idle clients
  }
}

void Daemon::State::on_message(int fd) {
  auto [peer, anomaly_socket] = connections[fd];
  auto reply_error = [&](const std::string& message) {
    (void)send_message(fd, {{"ok", false}, {"error", message}});
    close_connection(fd);
  };
  auto msg = receive_message(fd);
  if (!msg) return reply_error(msg.error().message());
  const std::string op = msg->value("op", "");
  const bool from_app = op == "anomaly" || op == "cuda-error";  // the application, for itself only
  if (anomaly_socket && !from_app)
    return reply_error("the anomaly socket takes only {\"op\":\"anomaly\",\"reason\":\"…\"} and "
                       "{\"op\":\"cuda-error\",\"api\":\"…\",\"error\":\"…\",\"code\":N}");
  if (op == "status") {
    if (auto st = send_message(fd, {{"ok", true}, {"status", status()}}, kMaxReply); !st)
      (void)send_message(fd, {{"ok", false}, {"error", "status: " + st.error().message()}});
    return close_connection(fd);
  }
  std::string reason = (*msg)["reason"].is_string() ? (*msg)["reason"].get<std::string>() : "";
  if (reason.size() > 1024) reason.resize(1024);
  if (op != "trigger" && !from_app) return reply_error("unknown op '" + op + "' (status, trigger)");
  std::vector<pid_t> pids;
  {
    std::lock_guard lock(mu);
    if (from_app) {
      pids.push_back(peer.pid);  // the application speaks for itself only
    } else if ((*msg)["pid"].is_number_integer()) {
      pids.push_back((*msg)["pid"].get<pid_t>());
    } else if ((*msg)["target"].is_string()) {
      const std::string name = (*msg)["target"].get<std::string>();
      if (!config.target(name)) return reply_error("no target named '" + name + "' in " + config.path);
      for (const auto& [pid, a] : armed)
        if (a.process.target == name) pids.push_back(pid);
      if (pids.empty()) return reply_error("target '" + name + "' has no running process");
    } else {
      return reply_error("a trigger names a pid or a target");
    }
    for (pid_t pid : pids)
      if (!armed.count(pid))
        return reply_error(from_app ? "pid " + std::to_string(pid) + " is not an armed target"
                                           : "pid " + std::to_string(pid) + " is not an armed target; 'mlfx-agent status' lists them");
  }
  const bool wait = msg->value("wait", false) && pids.size() == 1;
  for (pid_t pid : pids) {
    TriggerRecord t;
    t.kind = op == "anomaly" ? TriggerKind::kAppAnomaly : op == "cuda-error" ? TriggerKind::kCudaError : TriggerKind::kOnDemand;
    t.pid = pid;
    t.monotonic_ns = monotonic_ns();
    if (!name_target(t)) continue;  // exited since it was checked
    t.evidence = {{"reason", reason}, {"requester_pid", peer.pid}, {"requester_uid", peer.uid}};
    if (op == "cuda-error") t.evidence.update(cuda_error_evidence(*msg));
    if (wait) {  // the connection is the job's now: it replies when the capture is done
      ::epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nullptr);
      connections.erase(fd);
      fire(std::move(t), fd);
      return;
    }
    fire(std::move(t), -1);
  }
  json::Json recent_json = json::Json::array();
  {
    std::lock_guard lock(mu);
    for (size_t i = recent.size() >= pids.size() ? recent.size() - pids.size() : 0; i < recent.size(); ++i)
      recent_json.push_back(recent[i].to_json());
  }
  (void)send_message(fd, {{"ok", true}, {"triggers", recent_json}}, kMaxReply);
  close_connection(fd);
}

json::Json Daemon::State::status() {
  std::lock_guard lock(mu);
  json::Json s = {{"pid", getpid()}, {"config", config.path}, {"since", started}, {"device_id", config.agent.device_id}};
  json::Json hooks_json = json::Json::array();
  for (const bpf::Hook& h : hooks)
    hooks_json.push_back({{"trigger", h.trigger}, {"program", h.program}, {"available", h.available}, {"reason", h.reason}});
  s["ebpf"] = {{"hooks", hooks_json}, {"unavailable", bpf_unavailable}};
  if (bpf) s["ebpf"]["lost_events"] = bpf->lost_events();
  json::Json armed_json = json::Json::array();
  for (const auto& [pid, a] : armed) {
    json::Json kinds = json::Json::array();
    for (TriggerKind k : a.kinds) kinds.push_back(std::string(trigger_kind_name(k)));
    armed_json.push_back({{"pid", pid}, {"target", a.process.target}, {"comm", a.process.facts.comm},
                          {"exe", a.process.facts.exe}, {"held", a.held}, {"triggers", kinds}, {"since", a.armed_at}});
  }
  s["armed"] = armed_json;
  json::Json rules_json = json::Json::array();
  for (const RuleSpec& r : config.rules) {
    json::Json on = json::Json::array(), sources = json::Json::array();
    for (TriggerKind k : r.on) on.push_back(std::string(trigger_kind_name(k)));
    for (SourceKind k : r.sources) sources.push_back(std::string(source_kind_name(k)));
    uint64_t suppressed = 0;
    for (const TargetSpec& t : config.targets) suppressed += budget.suppressed(r.name + "/" + t.name);
    rules_json.push_back({{"name", r.name}, {"on", on}, {"sources", sources}, {"targets", r.targets},
                          {"max_captures", r.max_captures}, {"window_s", r.window.count()},
                          {"cooldown_s", r.cooldown.count()}, {"suppressed", suppressed}});
  }
  s["rules"] = rules_json;
  json::Json recent_json = json::Json::array();
  for (const TriggerRecord& t : recent) recent_json.push_back(t.to_json());
  s["recent_triggers"] = recent_json;
  s["captures"] = {{"captured", captured}, {"failed", failed}, {"queued", queued},
                   {"suppressed", budget.suppressed_total()}};
  s["spool"] = {{"dir", config.spool.dir}};
  return s;
}

// ---------------------------------------------------------------- the daemon

Daemon::Daemon(std::unique_ptr<State> s) : s_(std::move(s)) {}

Daemon::~Daemon() {
  if (!s_) return;
  s_->cancel = true;
  s_->holder.reset();  // finishes the capture in progress, releases every held process
  {
    std::lock_guard lock(s_->ship_mu);
    s_->ship_stop = true;
    s_->ship_wake.notify_all();
  }
  if (s_->shipper.joinable()) s_->shipper.join();
  for (auto& [fd, c] : s_->connections) ::close(fd);
  for (int fd : {s_->epoll, s_->signals, s_->rescan_timer, s_->pressure_timer})
    if (fd >= 0) ::close(fd);
  if (s_->bpf) s_->bpf.reset();
  for (const std::string& path : {s_->config.agent.control_socket, s_->config.agent.anomaly_socket}) {
    ::unlink(path.c_str());
    ::rmdir(path.substr(0, path.rfind('/')).c_str());  // the sockets' directory, when nothing else is in it
  }
}

Result<std::unique_ptr<Daemon>> Daemon::start(DaemonConfig config, Log& log) {
  auto s = std::make_unique<State>(log);
  log.set_format(config.agent.log_format);
  // Everything that can be wrong with the configuration fails here, before anything is armed.
  MLFX_ASSIGN(bundle::SealingKeys keys, bundle::load_sealing_keys(config.agent.device_key, config.agent.recipients));
  s->keys = std::make_shared<const bundle::SealingKeys>(std::move(keys));
  MLFX_ASSIGN(Spool spool, Spool::open(config.spool.dir, config.spool.quota));
  s->spool.emplace(std::move(spool));
  if (config.agent.control_group) {
    MLFX_ASSIGN(s->control_gid, group_id(*config.agent.control_group));
  }
  const gid_t control_group = s->control_gid ? *s->control_gid : gid_t(-1);
  MLFX_ASSIGN(s->control, listen_socket(config.agent.control_socket, s->control_gid ? 0660 : 0600, control_group));
  MLFX_ASSIGN(s->anomaly, listen_socket(config.agent.anomaly_socket, 0666, gid_t(-1)));
  // Targets armed for GPU dumps make their pipes here when CUDA starts in them.
  for (const RuleSpec& r : config.rules)
    if (std::count(r.sources.begin(), r.sources.end(), SourceKind::kGpu)) {
      MLFX_TRY(gpu::ensure_gpu_dir(config.agent.gpu_dir));
      break;
    }
  s->config = std::move(config);

  State* st = s.get();
  auto on_fatal = [st](const FatalSignal& f, const PtraceHolder::Stopped& stopped) { st->on_fatal(f, stopped); };
  auto on_gone = [st](pid_t pid, const std::string& how) { st->log.info("target_gone", {{"pid", pid}, {"how", how}}); };
  MLFX_ASSIGN(s->holder, PtraceHolder::start(on_fatal, on_gone));
  bool module_load = false;
  for (const RuleSpec& r : s->config.rules)
    module_load = module_load || std::count(r.on.begin(), r.on.end(), TriggerKind::kModuleLoad);
  bpf::BpfTriggers::Options bo;
  bo.exec = true;
  bo.module_load = module_load;
  auto triggers = s->config.agent.ebpf
                      ? bpf::BpfTriggers::open(bo)
                      : Result<bpf::BpfTriggers>(fail(Errc::kUnsupported, "eBPF is off in the configuration (ebpf = false)"));
  if (triggers) {
    s->bpf.emplace(std::move(*triggers));
    s->hooks = s->bpf->hooks();
    for (const bpf::Hook& h : s->hooks)
      if (!h.available || !h.reason.empty())
        log.write(h.available ? Level::kNotice : Level::kWarning, h.available ? "hook_fallback" : "hook_unavailable",
                  {{"trigger", h.trigger}, {"program", h.program}, {"reason", h.reason}});
  } else {
    s->bpf_unavailable = triggers.error().message();
    log.warn("ebpf_unavailable", {{"error", s->bpf_unavailable},
                                  {"still_armed", "fatal-signal (held with ptrace), memory-pressure, on-demand, "
                                                  "app-anomaly, cuda-error, lab-request"},
                                  {"unavailable", "oom-kill, ptrace-attach, memory-write, module-load; new targets "
                                                  "are found by a /proc rescan every 2 s instead of at exec"}});
  }

  s->epoll = ::epoll_create1(EPOLL_CLOEXEC);
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&set, sig);
  s->signals = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  s->rescan_timer = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  const time_t rescan = s->bpf ? kRescanSeconds : kRescanSecondsWithoutExecEvents;
  itimerspec every{{rescan, 0}, {rescan, 0}};
  ::timerfd_settime(s->rescan_timer, 0, &every, nullptr);
  s->pressure_timer = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  std::vector<int> fds = {s->signals, s->rescan_timer, s->pressure_timer, s->control.fd(), s->anomaly.fd()};
  if (s->bpf) fds.push_back(s->bpf->ring_fd());
  for (int fd : fds) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (fd < 0 || ::epoll_ctl(s->epoll, EPOLL_CTL_ADD, fd, &ev) != 0)
      return fail(Errc::kIo, "cannot set up the daemon's event loop: " + process::errno_name(errno));
  }
  s->rescan();
  s->shipper = std::thread([st] { st->ship_loop(); });
  return std::unique_ptr<Daemon>(new Daemon(std::move(s)));
}

int Daemon::run() {
  State& s = *s_;
  {
    std::lock_guard lock(s.mu);
    s.log.info("started", {{"config", s.config.path}, {"pid", getpid()}, {"armed", s.armed.size()},
                           {"control_socket", s.config.agent.control_socket}});
  }
  notify_systemd("READY=1");
  epoll_event events[16];
  while (!s.stop) {
    int n = ::epoll_wait(s.epoll, events, 16, 1000);
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == s.signals) {
        signalfd_siginfo si;
        while (::read(s.signals, &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGHUP) {
            if (auto st = s.reload(); !st)
              s.log.error("reload_refused", {{"error", st.error().message()}, {"kept", "the running configuration"}});
            else
              s.log.info("reloaded", {{"config", s.config.path}});
          } else {
            s.log.info("stopping", {{"signal", signal_name(static_cast<int>(si.ssi_signo))}});
            s.stop = true;
          }
        }
      } else if (fd == s.rescan_timer) {
        uint64_t ticks;
        (void)!::read(fd, &ticks, sizeof ticks);
        s.rescan();
      } else if (fd == s.pressure_timer) {
        uint64_t ticks;
        (void)!::read(fd, &ticks, sizeof ticks);
        s.sample_pressure();
      } else if (fd == s.control.fd()) {
        s.accept(s.control, false);
      } else if (fd == s.anomaly.fd()) {
        s.accept(s.anomaly, true);
      } else if (s.bpf && fd == s.bpf->ring_fd()) {
        if (auto st = s.bpf->drain([&](const mlfx_trigger_event& e) { s.on_bpf_event(e); }); !st)
          s.log.error("ebpf_read_failed", {{"error", st.error().message()}});
      } else if (s.connections.count(fd)) {
        s.on_message(fd);
      } else {
        s.on_pressure(fd);
      }
    }
    // A capture that runs past capture_timeout is abandoned (its target thawed, its bundle removed).
    const int64_t started = s.capture_started_ns;
    if (started && monotonic_ns() - started > std::chrono::nanoseconds(s.config.agent.capture_timeout).count()) {
      if (!s.cancel.exchange(true)) s.log.error("capture_timeout", {{"after_s", s.config.agent.capture_timeout.count()}});
    }
  }
  s.log.info("stopped", {{"captured", s.captured}, {"failed", s.failed}});
  return 0;
}

}  // namespace mlfx::agent::daemon
