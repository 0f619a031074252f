#include "bpf/bpf_triggers.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <cerrno>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>

#include "triggers.skel.h"

namespace mlfx::agent::bpf {

namespace {

// ---- libbpf's messages ------------------------------------------------------------------------

// libbpf prints through one process-wide callback. While a load runs, its warnings (which name
// the program the kernel refused, and the verifier's reason) are collected to explain the
// refusal; debug and info chatter is dropped; other warnings go to stderr, they are rare and real.
thread_local std::vector<std::string>* libbpf_messages = nullptr;

int print_libbpf(enum libbpf_print_level level, const char* format, va_list args) {
  if (level != LIBBPF_WARN) return 0;
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, format, args);
  std::string text(n > 0 ? n : 0, '\0');
  if (n > 0) std::vsnprintf(text.data(), text.size() + 1, format, again);
  va_end(again);
  if (libbpf_messages) {
    libbpf_messages->push_back(std::move(text));
  } else {
    std::fprintf(stderr, "%s", text.c_str());
  }
  return n;
}

class CollectLibbpfMessages {
 public:
  CollectLibbpfMessages() {
    static std::once_flag once;
    std::call_once(once, [] { libbpf_set_print(print_libbpf); });
    libbpf_messages = &lines_;
  }
  ~CollectLibbpfMessages() { libbpf_messages = nullptr; }
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  std::vector<std::string> lines_;
};

std::string errno_text(int err) {
  if (err == 524) return "ENOTSUPP (the kernel does not support this operation here)";
  const char* name = strerrorname_np(err);
  return std::string(name ? name : "errno " + std::to_string(err)) + " (" + std::strerror(err) + ")";
}

// ---- the programs -----------------------------------------------------------------------------

enum class HookKind { kTracepoint, kTpBtf, kFentry };

struct ProgramSpec {
  const char* trigger;
  const char* program;  // its name in triggers.bpf.c
  HookKind kind;
  const char* hook;     // tracepoint "category/name", tp_btf tracepoint name, or fentry function
  const char* covers;   // what it watches, for messages
  const char* primary = nullptr;  // a fallback: attached only when this program is not (one or more
                                  // programs, all attached together, stand in for a primary)
  const char* lacks = nullptr;    // a fallback: what it cannot tell that the primary can
  const char* needs = nullptr;    // a kernel function its code refers to (checked in BTF)
};

constexpr const char* kProcMemLacks = "it does not see writes submitted through io_uring";

constexpr ProgramSpec kPrograms[] = {
    {"fatal-signal", "fatal_signal_btf", HookKind::kTpBtf, "signal_generate", "fatal signals"},
    {"fatal-signal", "fatal_signal_tp", HookKind::kTracepoint, "signal/signal_generate", "fatal signals",
     "fatal_signal_btf",
     "it cannot see signal handlers (a signal the target handles is reported too) and gives no fault "
     "address"},
    {"oom-kill", "oom_kill_fentry", HookKind::kFentry, "mark_oom_victim", "OOM kills"},
    {"oom-kill", "oom_kill_tp", HookKind::kTracepoint, "oom/mark_victim", "OOM kills", "oom_kill_fentry",
     "it gives no target comm"},
    {"ptrace-attach", "ptrace_attach_fentry", HookKind::kFentry, "ptrace_attach", "ptrace attaches"},
    {"ptrace-attach", "ptrace_attach_tp", HookKind::kTracepoint, "syscalls/sys_enter_ptrace", "ptrace attaches",
     "ptrace_attach_fentry", "it gives no target comm"},
    {"memory-write", "memory_write_vm_writev", HookKind::kTracepoint, "syscalls/sys_enter_process_vm_writev",
     "memory writes with process_vm_writev"},
    {"memory-write", "memory_write_proc_mem", HookKind::kFentry, "mem_write", "memory writes through /proc/PID/mem"},
    {"memory-write", "proc_mem_write", HookKind::kTracepoint, "syscalls/sys_enter_write",
     "memory writes through /proc/PID/mem", "memory_write_proc_mem", kProcMemLacks, "mem_lseek"},
    {"memory-write", "proc_mem_writev", HookKind::kTracepoint, "syscalls/sys_enter_writev",
     "memory writes through /proc/PID/mem", "memory_write_proc_mem", kProcMemLacks, "mem_lseek"},
    {"memory-write", "proc_mem_pwrite64", HookKind::kTracepoint, "syscalls/sys_enter_pwrite64",
     "memory writes through /proc/PID/mem", "memory_write_proc_mem", kProcMemLacks, "mem_lseek"},
    {"memory-write", "proc_mem_pwritev", HookKind::kTracepoint, "syscalls/sys_enter_pwritev",
     "memory writes through /proc/PID/mem", "memory_write_proc_mem", kProcMemLacks, "mem_lseek"},
    {"memory-write", "proc_mem_pwritev2", HookKind::kTracepoint, "syscalls/sys_enter_pwritev2",
     "memory writes through /proc/PID/mem", "memory_write_proc_mem", kProcMemLacks, "mem_lseek"},
    {"library-injection", "exec_mapping_enter", HookKind::kTracepoint, "syscalls/sys_enter_mmap",
     "executable file mappings of armed processes"},
    {"library-injection", "exec_mapping_exit", HookKind::kTracepoint, "syscalls/sys_exit_mmap",
     "executable file mappings of armed processes (their addresses)"},
    {"module-load", "module_load_btf", HookKind::kTpBtf, "module_load", "kernel module loads"},
    {"exec", "exec_tp", HookKind::kTracepoint, "sched/sched_process_exec", "execs"},
    {"exit", "exit_tp", HookKind::kTracepoint, "sched/sched_process_exit", "exits of armed processes"},
    {"thread-tracking", "thread_start", HookKind::kTpBtf, "sched_process_fork",
     "new threads of armed processes (for the tracepoint hooks, which name threads)"},
};

std::string hook_label(const ProgramSpec& spec) {
  switch (spec.kind) {
    case HookKind::kTracepoint: return std::string("tracepoint ") + spec.hook;
    case HookKind::kTpBtf: return std::string("tp_btf/") + spec.hook;
    case HookKind::kFentry: return std::string("fentry/") + spec.hook;
  }
  return spec.hook;
}

struct ProgramState {
  const ProgramSpec* spec = nullptr;
  bool wanted = true;
  std::string reason;  // why it is not loaded or not attached; empty: fine so far
  bool loaded = false;
  bpf_link* link = nullptr;
};

ProgramState* find_state(std::vector<ProgramState>& programs, std::string_view name) {
  for (auto& p : programs)
    if (name == p.spec->program) return &p;
  return nullptr;
}

// ---- what this kernel has ---------------------------------------------------------------------

bool exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

// libbpf 1.x reads tracepoint ids under debugfs when /sys/kernel/debug/tracing exists, else
// under /sys/kernel/tracing; tracefs is mounted there when nothing is (as root).
struct Tracefs {
  std::string events;  // the events directory, empty when there is none
  std::string problem;
};

Tracefs find_or_mount_tracefs() {
  const std::string debugfs = "/sys/kernel/debug/tracing", tracefs = "/sys/kernel/tracing";
  if (access(debugfs.c_str(), F_OK) == 0 && exists(debugfs + "/events")) return {debugfs + "/events", ""};
  if (exists(tracefs + "/events")) return {tracefs + "/events", ""};
  if (!exists(tracefs))
    return {"", "this kernel has no tracefs (" + tracefs + " missing: built without CONFIG_TRACING?)"};
  if (mount("nodev", tracefs.c_str(), "tracefs", 0, nullptr) != 0)
    return {"", "tracefs is not mounted and mounting it on " + tracefs + " failed: " + errno_text(errno) +
                    " (mount it: mount -t tracefs nodev " + tracefs + ")"};
  if (!exists(tracefs + "/events")) return {"", "tracefs mounted on " + tracefs + " has no events directory"};
  return {tracefs + "/events", ""};
}

bool kernel_has_modules() { return exists("/proc/modules"); }

constexpr const char* kNoModules =
    "this kernel has no module support (CONFIG_MODULES unset): no module can be loaded, so there is "
    "nothing to watch";

// Why this kernel cannot run a program's hook; empty when it can (as far as can be seen before loading).
std::string missing_hook(const ProgramSpec& spec, const btf* vmlinux, const Tracefs& tracefs) {
  const std::string hook = spec.hook;
  if (std::string_view(spec.trigger) == "module-load" && !kernel_has_modules()) return kNoModules;
  if (spec.needs && btf__find_by_name_kind(vmlinux, spec.needs, BTF_KIND_FUNC) < 0)
    return std::string("function ") + spec.needs + " (which it recognizes the file by) is not in this kernel's BTF";
  switch (spec.kind) {
    case HookKind::kTracepoint: {
      if (tracefs.events.empty()) return tracefs.problem;
      if (exists(tracefs.events + "/" + hook)) return "";
      const std::string category = hook.substr(0, hook.find('/'));
      if (category == "syscalls" && !exists(tracefs.events + "/syscalls"))
        return "this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS unset)";
      return "this kernel has no tracepoint " + hook;
    }
    case HookKind::kTpBtf:
      if (btf__find_by_name_kind(vmlinux, ("btf_trace_" + hook).c_str(), BTF_KIND_TYPEDEF) >= 0) return "";
      return "this kernel has no tracepoint " + hook;
    case HookKind::kFentry:
      if (btf__find_by_name_kind(vmlinux, hook.c_str(), BTF_KIND_FUNC) >= 0) return "";
      return "function " + hook + " is not in this kernel's BTF (renamed, or inlined into its callers)";
  }
  return "";
}

// Whether this kernel loads fentry programs at all (some refuse BPF trampolines outright): a
// two-instruction one on `function`, so that a refusal costs no reload of the whole object.
std::string fentry_refusal(const btf* vmlinux, const char* function) {
  const int id = btf__find_by_name_kind(vmlinux, function, BTF_KIND_FUNC);
  if (id < 0) return "";  // the program itself is then reported as lacking its function
  const bpf_insn return_zero[] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = 0},
      {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0}};
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_FENTRY, .attach_btf_id = __u32(id));
  const int fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "mlfx_probe", "GPL", return_zero, 2, &opts);
  if (fd >= 0) {
    close(fd);
    return "";
  }
  const int err = errno;
  return "this kernel does not load fentry programs (BPF trampolines): a minimal one on " + std::string(function) +
         " was refused with " + errno_text(err);
}

// CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON (kernels >= 5.8), is what loading tracing programs takes.
bool has_capabilities() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (syscall(SYS_capget, &header, data) != 0) return geteuid() == 0;
  auto has = [&](int cap) { return (data[cap / 32].effective >> (cap % 32)) & 1u; };
  constexpr int kCapSysAdmin = 21, kCapPerfmon = 38, kCapBpf = 39;
  return has(kCapSysAdmin) || (has(kCapBpf) && has(kCapPerfmon));
}

// ---- why the kernel refused a program ---------------------------------------------------------

std::string verifier_error(const std::string& log) {
  // The last line that is not the verifier's statistics is the reason it gave.
  std::string last;
  size_t start = 0;
  while (start < log.size()) {
    size_t end = log.find('\n', start);
    if (end == std::string::npos) end = log.size();
    std::string line = log.substr(start, end - start);
    start = end + 1;
    if (line.empty() || line.starts_with("processed ") || line.starts_with("verification time") ||
        line.starts_with("stack depth") || line.find("PROG LOAD LOG") != std::string::npos)
      continue;
    last = line;
  }
  return last;
}

struct Refusal {
  std::string program;
  std::string why;
};

// The program a libbpf message names ("" when none), and what it says of it: libbpf's messages
// about a program start "prog 'NAME': " (the verifier's log is one of them, between BEGIN and
// END PROG LOAD LOG lines).
std::pair<std::string, std::string> named_program(const std::string& line, const std::vector<ProgramState>& programs) {
  for (const auto& p : programs) {
    if (!p.wanted || !p.reason.empty()) continue;
    const std::string prefix = std::string("prog '") + p.spec->program + "': ";
    if (line.starts_with(prefix)) return {p.spec->program, line.substr(prefix.size())};
  }
  return {"", ""};
}

// The first program libbpf names, with the verifier's reason and the errno it gave.
std::optional<Refusal> refused_program(const std::vector<std::string>& lines,
                                       const std::vector<ProgramState>& programs) {
  std::optional<Refusal> found;
  std::string verifier, other;
  int err = 0;
  for (const std::string& raw : lines) {
    std::string line = raw.starts_with("libbpf: ") ? raw.substr(8) : raw;
    while (!line.empty() && line.back() == '\n') line.pop_back();
    auto [program, says] = named_program(line, programs);
    if (program.empty()) continue;
    if (found && found->program != program) break;
    if (!found) found = Refusal{program, ""};
    if (says.find("BEGIN PROG LOAD LOG") != std::string::npos) {
      verifier = verifier_error(says);
    } else if (says.starts_with("failed to load: ")) {
      err = -std::atoi(says.c_str() + 16);
    } else if (other.empty() && !says.starts_with("BPF program load failed")) {
      other = says;
    }
  }
  if (!found) return std::nullopt;
  const std::string error = err > 0 ? errno_text(err) : "no error number";
  if (!verifier.empty()) {
    found->why = "the verifier says '" + verifier + "' (" + error + ")";
  } else if (!other.empty()) {
    found->why = other + " (" + error + ")";
  } else {
    found->why = "the kernel refused to load it before verifying it: " + error;
  }
  return found;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const auto& l : lines) all += l;
  while (!all.empty() && all.back() == '\n') all.pop_back();
  return all;
}

// ---- /proc ------------------------------------------------------------------------------------

// The tgid of a thread (its Tgid line in /proc/TID/status); nullopt when it does not exist.
std::optional<pid_t> tgid_of(pid_t tid) {
  std::ifstream status("/proc/" + std::to_string(tid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.starts_with("Tgid:")) return static_cast<pid_t>(std::atol(line.c_str() + 5));
  return std::nullopt;
}

std::vector<pid_t> threads_of(pid_t tgid) {
  std::vector<pid_t> tids;
  DIR* dir = opendir(("/proc/" + std::to_string(tgid) + "/task").c_str());
  if (!dir) return tids;
  while (dirent* entry = readdir(dir)) {
    pid_t tid = 0;
    const char* name = entry->d_name;
    if (std::from_chars(name, name + std::strlen(name), tid).ec == std::errc() && tid > 0) tids.push_back(tid);
  }
  closedir(dir);
  return tids;
}

}  // namespace

// ---- BpfTriggers ------------------------------------------------------------------------------

struct BpfTriggers::State {
  triggers_bpf* skeleton = nullptr;
  ring_buffer* ring = nullptr;
  std::vector<ProgramState> programs;
  const EventCallback* on_event = nullptr;  // during drain()/poll()

  ~State() {
    ring_buffer__free(ring);
    for (auto& p : programs) bpf_link__destroy(p.link);
    triggers_bpf__destroy(skeleton);
  }

  bpf_program* program(const ProgramState& p) const {
    return bpf_object__find_program_by_name(skeleton->obj, p.spec->program);
  }

  // The write-syscall hooks of /proc/PID/mem look at every write only while some armed process
  // watches memory writes (the kernel side forgets exited ones, so the armed map is asked).
  void update_proc_mem_watch() {
    bpf_map* armed = skeleton->maps.armed;
    __u32 tgid = 0, next = 0, mask = 0, watch = 0;
    for (const void* prev = nullptr; bpf_map__get_next_key(armed, prev, &next, sizeof(next)) == 0; prev = &tgid) {
      tgid = next;
      if (bpf_map__lookup_elem(armed, &tgid, sizeof(tgid), &mask, sizeof(mask), 0) == 0 &&
          (mask & MLFX_EV_MEMORY_WRITE))
        watch = 1;
    }
    __atomic_store_n(&skeleton->bss->watch_proc_mem_writes, watch, __ATOMIC_RELAXED);
  }

  static int on_ring_sample(void* context, void* data, size_t size) {
    auto* state = static_cast<State*>(context);
    mlfx_trigger_event event{};
    std::memcpy(&event, data, std::min(size, sizeof(event)));
    if (state->on_event && *state->on_event) (*state->on_event)(event);
    return 0;
  }
};

// Opens the object and loads every wanted program the kernel accepts: a load that fails on one
// program (libbpf then names it) is retried without it, that program recorded as refused.
static Result<triggers_bpf*> load_accepted(const BpfTriggers::Options& options, std::vector<ProgramState>& programs) {
  for (size_t attempt = 0; attempt <= programs.size(); ++attempt) {
    CollectLibbpfMessages messages;
    triggers_bpf* skeleton = triggers_bpf__open();
    if (!skeleton) return fail(Errc::kIo, "opening the eBPF triggers' object failed: " + errno_text(errno));
    skeleton->rodata->agent_tgid = static_cast<__u32>(options.agent_tgid);
    skeleton->rodata->module_load_on = options.module_load;
    skeleton->rodata->exec_on = options.exec;
    size_t to_load = 0;
    for (auto& p : programs) {
      const bool load = p.wanted && p.reason.empty();
      to_load += load;
      bpf_program__set_autoload(bpf_object__find_program_by_name(skeleton->obj, p.spec->program), load);
    }
    if (to_load == 0) {
      triggers_bpf__destroy(skeleton);
      return static_cast<triggers_bpf*>(nullptr);  // nothing to load: the caller says why
    }
    const int err = triggers_bpf__load(skeleton);
    if (err == 0) {
      for (auto& p : programs) p.loaded = p.wanted && p.reason.empty();
      return skeleton;
    }
    triggers_bpf__destroy(skeleton);
    std::optional<Refusal> refusal = refused_program(messages.lines(), programs);
    if (!refusal) {
      const int code = err < 0 ? -err : errno;
      const Errc errc = code == EPERM ? Errc::kPermission : Errc::kIo;
      return fail(errc, "loading the eBPF triggers into the kernel failed: " + errno_text(code) + ": " +
                            joined(messages.lines()));
    }
    find_state(programs, refusal->program)->reason = refusal->why;
  }
  return fail(Errc::kIo, "loading the eBPF triggers: no program was accepted");
}

Result<BpfTriggers> BpfTriggers::open(const Options& options) {
  if (!has_capabilities())
    return fail(Errc::kPermission,
                "loading the eBPF triggers needs root (CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON): run the agent "
                "as root or with those capabilities; the daemon's other triggers work without them");
  std::unique_ptr<btf, void (*)(btf*)> vmlinux(btf__load_vmlinux_btf(), btf__free);
  if (!vmlinux)
    return fail(Errc::kUnsupported,
                "this kernel has no BTF (/sys/kernel/btf/vmlinux: " + errno_text(errno) +
                    "; built without CONFIG_DEBUG_INFO_BTF), so the eBPF triggers are unavailable (fatal signal, "
                    "OOM kill, ptrace attach, memory write, module load); the daemon's other triggers still work");
  const Tracefs tracefs = find_or_mount_tracefs();

  std::optional<std::string> no_fentry;  // probed at the first fentry program that has its function
  auto state = std::make_unique<State>();
  for (const ProgramSpec& spec : kPrograms) {
    ProgramState p;
    p.spec = &spec;
    p.reason = missing_hook(spec, vmlinux.get(), tracefs);
    if (spec.kind == HookKind::kFentry && p.reason.empty()) {
      if (!no_fentry) no_fentry = fentry_refusal(vmlinux.get(), spec.hook);
      p.reason = *no_fentry;
    }
    if (std::string_view(spec.trigger) == "module-load" && !options.module_load) {
      p.wanted = false;
      if (p.reason.empty()) p.reason = "off: not asked for (Options::module_load)";
    }
    for (const std::string& skipped : options.skip_programs)
      if (skipped == spec.program) {
        p.wanted = false;
        p.reason = "skipped (Options::skip_programs)";
      }
    state->programs.push_back(std::move(p));
  }

  MLFX_ASSIGN(state->skeleton, load_accepted(options, state->programs));
  if (!state->skeleton) {
    std::string why;
    for (const auto& p : state->programs) why += "; " + hook_label(*p.spec) + ": " + p.reason;
    return fail(Errc::kUnsupported, "this kernel runs none of the eBPF triggers" + why);
  }

  // Attach: primaries first (the table's order), a fallback only where its primary failed.
  size_t attached = 0;
  for (auto& p : state->programs) {
    if (!p.loaded) continue;
    if (p.spec->primary && find_state(state->programs, p.spec->primary)->link) continue;
    CollectLibbpfMessages messages;
    p.link = bpf_program__attach(state->program(p));
    if (!p.link) {
      const int err = errno;
      p.reason = "attaching failed: " + errno_text(err);
      if (err == 524 && p.spec->kind == HookKind::kFentry)
        p.reason += ": this kernel cannot attach BPF trampolines here (fentry needs "
                    "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS and a traceable function)";
      continue;
    }
    ++attached;
  }
  if (attached == 0) {
    std::string why;
    for (const auto& p : state->programs) why += "; " + hook_label(*p.spec) + ": " + p.reason;
    return fail(Errc::kUnsupported, "this kernel runs none of the eBPF triggers" + why);
  }

  state->ring = ring_buffer__new(bpf_map__fd(state->skeleton->maps.events), State::on_ring_sample, state.get(), nullptr);
  if (!state->ring) return fail(Errc::kIo, "opening the eBPF triggers' ring buffer failed: " + errno_text(errno));
  return BpfTriggers(std::move(state));
}

BpfTriggers::BpfTriggers(std::unique_ptr<State> state) : state_(std::move(state)) {}
BpfTriggers::BpfTriggers(BpfTriggers&&) noexcept = default;
BpfTriggers& BpfTriggers::operator=(BpfTriggers&&) noexcept = default;
BpfTriggers::~BpfTriggers() = default;

std::vector<Hook> BpfTriggers::hooks() const {
  std::vector<Hook> hooks;
  const auto& programs = state_->programs;
  for (const auto& p : programs) {
    const ProgramSpec& spec = *p.spec;
    if (spec.primary) continue;  // shown with its primary
    const std::string label = hook_label(spec) + " (" + spec.covers + ")";
    std::vector<const ProgramState*> fallbacks;
    for (const auto& f : programs)
      if (f.spec->primary && f.spec->primary == std::string_view(spec.program)) fallbacks.push_back(&f);
    std::string fallback_names, fallback_labels, fallback_failures;
    bool fallback_in_use = false;
    for (const ProgramState* f : fallbacks) {
      const std::string sep = fallback_names.empty() ? "" : ", ";
      fallback_names += sep + f->spec->program;
      fallback_labels += sep + hook_label(*f->spec);
      if (f->link) fallback_in_use = true;
      else fallback_failures += (fallback_failures.empty() ? "" : "; ") + hook_label(*f->spec) + ": " + f->reason;
    }
    if (p.link) {
      hooks.push_back({spec.trigger, spec.program, true, ""});
    } else if (fallback_in_use) {
      std::string reason = label + ": " + p.reason + "; using " + fallback_labels + " instead, but " +
                           fallbacks.front()->spec->lacks;
      if (!fallback_failures.empty()) reason += "; not attached: " + fallback_failures;
      hooks.push_back({spec.trigger, fallback_names, true, reason});
    } else {
      std::string reason = label + ": " + p.reason;
      if (!fallbacks.empty()) reason += "; and " + fallback_failures;
      hooks.push_back({spec.trigger, spec.program, false, reason});
    }
  }
  return hooks;
}

Status BpfTriggers::arm(pid_t tgid, uint32_t kinds_mask) {
  const std::string who = "arming process " + std::to_string(tgid);
  const std::optional<pid_t> owner = tgid_of(tgid);
  if (!owner) return fail(Errc::kNotFound, who + ": no such process");
  if (*owner != tgid)
    return fail(Errc::kInvalidArgument, who + ": it is a thread of process " + std::to_string(*owner) + "; arm that");
  const __u32 key = tgid, mask = kinds_mask;
  if (bpf_map__update_elem(state_->skeleton->maps.armed, &key, sizeof(key), &mask, sizeof(mask), BPF_ANY) != 0) {
    const int err = errno;
    if (err == E2BIG || err == ENOSPC)
      return fail(Errc::kUnsupported, who + ": too many armed processes (the kernel side holds " +
                                          std::to_string(bpf_map__max_entries(state_->skeleton->maps.armed)) + ")");
    return fail(Errc::kIo, who + ": updating the armed map failed: " + errno_text(err));
  }
  // Its threads, for the hooks that name a thread id; threads started from now on are added by
  // thread_start. A full map only costs those fallbacks the threads that do not fit.
  for (pid_t tid : threads_of(tgid)) {
    if (tid == tgid) continue;
    const __u32 thread = tid;
    (void)bpf_map__update_elem(state_->skeleton->maps.armed_threads, &thread, sizeof(thread), &key, sizeof(key),
                               BPF_ANY);
  }
  state_->update_proc_mem_watch();
  return {};
}

Status BpfTriggers::disarm(pid_t tgid) {
  const __u32 key = tgid;
  if (bpf_map__delete_elem(state_->skeleton->maps.armed, &key, sizeof(key), 0) != 0 && errno != ENOENT)
    return fail(Errc::kIo, "disarming process " + std::to_string(tgid) + " failed: " + errno_text(errno));
  // Forget its threads: collect first, deleting while walking the map would skip keys.
  bpf_map* threads = state_->skeleton->maps.armed_threads;
  std::vector<__u32> mine;
  __u32 tid = 0, next = 0, owner = 0;
  for (const void* prev = nullptr; bpf_map__get_next_key(threads, prev, &next, sizeof(next)) == 0; prev = &tid) {
    tid = next;
    if (bpf_map__lookup_elem(threads, &tid, sizeof(tid), &owner, sizeof(owner), 0) == 0 && owner == key)
      mine.push_back(tid);
  }
  for (__u32 t : mine) (void)bpf_map__delete_elem(threads, &t, sizeof(t), 0);  // gone already: fine
  state_->update_proc_mem_watch();
  return {};
}

int BpfTriggers::ring_fd() const { return ring_buffer__epoll_fd(state_->ring); }

Status BpfTriggers::drain(const EventCallback& on_event) {
  state_->on_event = &on_event;
  const int n = ring_buffer__consume(state_->ring);
  state_->on_event = nullptr;
  if (n < 0) return fail(Errc::kIo, "reading the eBPF triggers' ring buffer failed: " + errno_text(-n));
  return {};
}

Result<int> BpfTriggers::poll(std::chrono::milliseconds timeout, const EventCallback& on_event) {
  state_->on_event = &on_event;
  const int n = ring_buffer__poll(state_->ring, static_cast<int>(timeout.count()));
  state_->on_event = nullptr;
  if (n == -EINTR) return 0;
  if (n < 0) return fail(Errc::kIo, "waiting on the eBPF triggers' ring buffer failed: " + errno_text(-n));
  return n;
}

uint64_t BpfTriggers::lost_events() const { return __atomic_load_n(&state_->skeleton->bss->lost_events, __ATOMIC_RELAXED); }

}  // namespace mlfx::agent::bpf
