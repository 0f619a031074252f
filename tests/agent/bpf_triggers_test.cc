// The eBPF triggers (agent/bpf/) loaded into this machine's kernel: each trigger set off for real
// by forked children (a signal, a real fault, ptrace, process_vm_writev, /proc/PID/mem, an OOM
// kill in a memory-limited cgroup, exec, exit) is reported exactly once with the right target and
// actor; unarmed processes and the agent's own actions are not. Needs root; skipped otherwise.
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "bpf/bpf_triggers.h"

namespace mlfx::agent::bpf {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Written by the tests' writers into an armed child; the same address in every forked process.
volatile char g_target_buffer[64] = "before";

std::string triggers_unavailable_reason() {
  if (geteuid() != 0) return "needs root (loading eBPF programs: CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)";
  return "";
}

// ---- forked processes -------------------------------------------------------------------------

// A forked child running `body`, killed and reaped when it goes out of scope unless reaped before.
class Child {
 public:
  explicit Child(const std::function<void()>& body) {
    pid_ = fork();
    if (pid_ == 0) {
      rlimit no_core{0, 0};
      setrlimit(RLIMIT_CORE, &no_core);  // the fatal-signal tests must not leave core files
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      body();
      _exit(0);
    }
  }
  Child(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      (void)wait();
    }
  }
  pid_t pid() const { return pid_; }
  int wait() {  // the wait status
    int status = 0;
    while (waitpid(pid_, &status, __WALL) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    return status;
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
};

[[noreturn]] void sleep_forever() {
  for (;;) pause();
}

// A one-byte go signal from the test to a child (or back).
class Pipe {
 public:
  Pipe() { EXPECT_EQ(pipe(fds_), 0); }
  ~Pipe() {
    close(fds_[0]);
    close(fds_[1]);
  }
  void send(char c = 'g') { EXPECT_EQ(write(fds_[1], &c, 1), 1); }
  char receive() {
    char c = 0;
    while (read(fds_[0], &c, 1) < 0 && errno == EINTR) {
    }
    return c;
  }
  void send_int(int v) { EXPECT_EQ(write(fds_[1], &v, sizeof(v)), ssize_t(sizeof(v))); }
  int receive_int() {
    int v = 0;
    EXPECT_EQ(read(fds_[0], &v, sizeof(v)), ssize_t(sizeof(v)));
    return v;
  }

 private:
  int fds_[2] = {-1, -1};
};

// Runs `action` in a forked process and returns its pid once it has exited 0.
pid_t run_in_other_process(const std::function<bool()>& action) {
  Child other([&] { _exit(action() ? 0 : 1); });
  const int status = other.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the acting process failed, status " << status;
  return other.pid();
}

// ---- events -----------------------------------------------------------------------------------

// Everything one BpfTriggers reported, gathered by polling its ring buffer.
class EventLog {
 public:
  explicit EventLog(BpfTriggers& triggers) : triggers_(triggers) {}

  using Match = std::function<bool(const mlfx_trigger_event&)>;

  // Polls until an event matches (then a little longer, to catch a duplicate) or the time is up.
  std::vector<mlfx_trigger_event> await(const Match& match, std::chrono::milliseconds timeout = 3s) {
    const auto deadline = Clock::now() + timeout;
    std::optional<Clock::time_point> settle_until;
    while (Clock::now() < (settle_until ? *settle_until : deadline)) {
      auto n = triggers_.poll(20ms, [&](const mlfx_trigger_event& e) { seen_.push_back(e); });
      EXPECT_TRUE(n) << n.error().to_string();
      if (!settle_until && !matching(match).empty()) settle_until = Clock::now() + 150ms;
    }
    return matching(match);
  }

  // Collects for a while, for checks that nothing was reported.
  std::vector<mlfx_trigger_event> collect(const Match& match, std::chrono::milliseconds period = 400ms) {
    const auto until = Clock::now() + period;
    while (Clock::now() < until) {
      auto n = triggers_.poll(20ms, [&](const mlfx_trigger_event& e) { seen_.push_back(e); });
      EXPECT_TRUE(n) << n.error().to_string();
    }
    return matching(match);
  }

  std::vector<mlfx_trigger_event> matching(const Match& match) const {
    std::vector<mlfx_trigger_event> found;
    for (const auto& e : seen_)
      if (match(e)) found.push_back(e);
    return found;
  }

 private:
  BpfTriggers& triggers_;
  std::vector<mlfx_trigger_event> seen_;
};

EventLog::Match of(uint32_t kind, pid_t target) {
  return [=](const mlfx_trigger_event& e) { return e.kind == kind && e.target_tgid == uint32_t(target); };
}
EventLog::Match about(pid_t target) {
  return [=](const mlfx_trigger_event& e) { return e.target_tgid == uint32_t(target); };
}

std::string comm(const mlfx_trigger_event& e, bool target) {
  const char* c = target ? e.target_comm : e.actor_comm;
  return std::string(c, strnlen(c, MLFX_COMM_LEN));
}

const Hook* find_hook(const std::vector<Hook>& hooks, std::string_view program) {
  for (const auto& h : hooks)
    if (h.program == program) return &h;
  return nullptr;
}

// The hook of writes through /proc/PID/mem: fentry/mem_write, or its write-syscall fallbacks.
const Hook* proc_mem_hook(const std::vector<Hook>& hooks) {
  for (const auto& h : hooks)
    if (h.program == "memory_write_proc_mem" || h.program.starts_with("proc_mem_")) return &h;
  return nullptr;
}

// ---- the fixture: one loaded set of triggers for the suite ------------------------------------

constexpr uint32_t kAll = MLFX_EV_FATAL_SIGNAL | MLFX_EV_OOM_KILL | MLFX_EV_PTRACE_ATTACH | MLFX_EV_MEMORY_WRITE |
                          MLFX_EV_EXIT;

class BpfTriggersTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!triggers_unavailable_reason().empty()) return;
    // agent_tgid 0: nothing is excluded, so that this test process can act as the attacker.
    auto opened = BpfTriggers::open({.module_load = true, .exec = true, .agent_tgid = 0, .skip_programs = {}});
    ASSERT_TRUE(opened) << opened.error().to_string();
    triggers_ = new BpfTriggers(std::move(*opened));
    for (const Hook& h : triggers_->hooks())
      std::printf("  hook %-16s %-24s %s%s\n", h.trigger.c_str(), h.program.c_str(),
                  h.available ? "available" : "UNAVAILABLE", h.reason.empty() ? "" : (": " + h.reason).c_str());
  }
  static void TearDownTestSuite() {
    delete triggers_;
    triggers_ = nullptr;
  }
  void SetUp() override {
    if (std::string why = triggers_unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
    ASSERT_NE(triggers_, nullptr);
    log_.emplace(*triggers_);
  }
  void arm(pid_t pid, uint32_t mask = kAll) {
    auto armed = triggers_->arm(pid, mask);
    ASSERT_TRUE(armed) << armed.error().to_string();
  }
  bool hook_available(std::string_view program) {
    const Hook* h = find_hook(triggers_->hooks(), program);
    return h && h->available;
  }

  static BpfTriggers* triggers_;
  std::optional<EventLog> log_;
};

BpfTriggers* BpfTriggersTest::triggers_ = nullptr;

TEST_F(BpfTriggersTest, HooksOfThisKernelAreKnownAndExplained) {
  const auto hooks = triggers_->hooks();
  for (const char* trigger : {"fatal-signal", "oom-kill", "ptrace-attach", "memory-write", "exec", "exit"}) {
    bool any = false;
    for (const Hook& h : hooks) any |= h.trigger == trigger && h.available;
    EXPECT_TRUE(any) << trigger << " is unavailable on this kernel";
  }
  for (const Hook& h : hooks) {
    if (!h.available) {
      EXPECT_FALSE(h.reason.empty()) << h.program << " is unavailable without a reason";
    }
  }
  const Hook* module = find_hook(hooks, "module_load_btf");
  ASSERT_NE(module, nullptr);
  if (access("/proc/modules", F_OK) != 0) {
    EXPECT_FALSE(module->available);
    EXPECT_NE(module->reason.find("CONFIG_MODULES"), std::string::npos) << module->reason;
  }
}

TEST_F(BpfTriggersTest, ArmRefusesAThreadAndAMissingProcess) {
  auto missing = triggers_->arm(0x3fffffff, kAll);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Errc::kNotFound);

  Pipe tid_pipe;
  Child child([&] {
    pthread_t t;
    pthread_create(&t, nullptr, [](void* p) -> void* {
      static_cast<Pipe*>(p)->send_int(gettid());
      sleep_forever();
    }, &tid_pipe);
    sleep_forever();
  });
  const pid_t thread = tid_pipe.receive_int();
  auto armed = triggers_->arm(thread, kAll);
  ASSERT_FALSE(armed);
  EXPECT_EQ(armed.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(armed.error().message().find(std::to_string(child.pid())), std::string::npos) << armed.error().message();
  EXPECT_TRUE(triggers_->disarm(child.pid()));  // not armed: no error
}

TEST_F(BpfTriggersTest, KillWithSigsegvIsReportedOnce) {
  Child child(sleep_forever);
  arm(child.pid());
  ASSERT_EQ(kill(child.pid(), SIGSEGV), 0);
  const auto events = log_->await(of(MLFX_EV_FATAL_SIGNAL, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  const auto& e = events[0];
  EXPECT_EQ(e.signal, SIGSEGV);
  EXPECT_EQ(e.si_code, SI_USER);
  EXPECT_EQ(e.target_tid, uint32_t(child.pid()));
  EXPECT_EQ(e.actor_tgid, uint32_t(getpid()));
  EXPECT_NE(e.ktime_ns, 0u);
  const int status = child.wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) << status;
}

TEST_F(BpfTriggersTest, RealFaultHasKernelCodeAddressAndStack) {
  Pipe go;
  Child child([&] {
    go.receive();
    *static_cast<volatile int*>(nullptr) = 1;  // SIGSEGV, SEGV_MAPERR at address 0
  });
  arm(child.pid());
  go.send();
  const auto events = log_->await(of(MLFX_EV_FATAL_SIGNAL, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  const auto& e = events[0];
  EXPECT_EQ(e.signal, SIGSEGV);
  EXPECT_EQ(e.si_code, SEGV_MAPERR);
  EXPECT_EQ(e.address, 0u);
  EXPECT_EQ(e.actor_tgid, uint32_t(child.pid()));  // the kernel raised it in the faulting task
  EXPECT_GT(e.kstack_bytes, 0);
  EXPECT_NE(e.kstack[0], 0u);
  const int status = child.wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) << status;
}

TEST_F(BpfTriggersTest, HandledSignalIsNotFatalAndNotReported) {
  if (!hook_available("fatal_signal_btf")) GTEST_SKIP() << "the tracepoint fallback cannot see signal handlers";
  Pipe ready;
  Child child([&] {
    signal(SIGSEGV, [](int) {});
    ready.send();
    sleep_forever();
  });
  ready.receive();
  arm(child.pid());
  ASSERT_EQ(kill(child.pid(), SIGSEGV), 0);
  EXPECT_TRUE(log_->collect(of(MLFX_EV_FATAL_SIGNAL, child.pid())).empty());
}

TEST_F(BpfTriggersTest, PtraceAttachAndSeizeByAnotherProcessAreReported) {
  Child child(sleep_forever);
  arm(child.pid());
  const pid_t attacher = run_in_other_process([&] { return ptrace(PTRACE_ATTACH, child.pid(), 0, 0) == 0; });
  auto events = log_->await(of(MLFX_EV_PTRACE_ATTACH, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].actor_tgid, uint32_t(attacher));
  EXPECT_EQ(events[0].detail, uint32_t(PTRACE_ATTACH));
  EXPECT_EQ(events[0].target_tid, uint32_t(child.pid()));

  const pid_t seizer = run_in_other_process([&] { return ptrace(PTRACE_SEIZE, child.pid(), 0, 0) == 0; });
  events = log_->await([&](const mlfx_trigger_event& e) {
    return of(MLFX_EV_PTRACE_ATTACH, child.pid())(e) && e.actor_tgid == uint32_t(seizer);
  });
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].detail, uint32_t(PTRACE_SEIZE));
}

TEST_F(BpfTriggersTest, TheAgentsOwnPtraceIsNotReported) {
  // A second set of triggers whose agent is this process (the default).
  auto opened = BpfTriggers::open({});
  ASSERT_TRUE(opened) << opened.error().to_string();
  BpfTriggers& agent_triggers = *opened;
  EventLog agent_log(agent_triggers);
  Child child(sleep_forever);
  ASSERT_TRUE(agent_triggers.arm(child.pid(), kAll));

  ASSERT_EQ(ptrace(PTRACE_SEIZE, child.pid(), 0, 0), 0) << strerror(errno);
  ASSERT_EQ(ptrace(PTRACE_INTERRUPT, child.pid(), 0, 0), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child.pid(), &status, __WALL), child.pid());
  ASSERT_EQ(ptrace(PTRACE_DETACH, child.pid(), 0, 0), 0) << strerror(errno);
  // Another process then does the same: that one is reported (the hook works), ours is not.
  const pid_t other = run_in_other_process([&] { return ptrace(PTRACE_SEIZE, child.pid(), 0, 0) == 0; });
  const auto events = agent_log.await(of(MLFX_EV_PTRACE_ATTACH, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].actor_tgid, uint32_t(other));
}

TEST_F(BpfTriggersTest, ProcessVmWritevIsReportedWithTheRemoteAddress) {
  Child child(sleep_forever);
  arm(child.pid());
  const pid_t writer = run_in_other_process([&] {
    char data[] = "tampered";
    iovec local{data, sizeof(data)}, remote{const_cast<char*>(g_target_buffer), sizeof(data)};
    return process_vm_writev(child.pid(), &local, 1, &remote, 1, 0) == ssize_t(sizeof(data));
  });
  const auto events = log_->await(of(MLFX_EV_MEMORY_WRITE, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].detail, uint32_t(MLFX_WRITE_PROCESS_VM_WRITEV));
  EXPECT_EQ(events[0].address, reinterpret_cast<uint64_t>(g_target_buffer));
  EXPECT_EQ(events[0].actor_tgid, uint32_t(writer));
}

TEST_F(BpfTriggersTest, ProcPidMemWriteIsReportedOrExplained) {
  const auto hooks = triggers_->hooks();
  const Hook* h = proc_mem_hook(hooks);
  ASSERT_NE(h, nullptr);
  if (!h->available) {
    EXPECT_FALSE(h->reason.empty());
    GTEST_SKIP() << "memory writes through /proc/PID/mem are not watched on this kernel: " << h->reason;
  }
  Child child(sleep_forever);
  arm(child.pid());
  const pid_t writer = run_in_other_process([&] {
    const int fd = open(("/proc/" + std::to_string(child.pid()) + "/mem").c_str(), O_RDWR);
    const bool ok = fd >= 0 && pwrite(fd, "tampered", 8, reinterpret_cast<off_t>(g_target_buffer)) == 8;
    close(fd);
    return ok;
  });
  const auto events = log_->await(of(MLFX_EV_MEMORY_WRITE, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].detail, uint32_t(MLFX_WRITE_PROC_PID_MEM));
  EXPECT_EQ(events[0].address, reinterpret_cast<uint64_t>(g_target_buffer));
  EXPECT_EQ(events[0].actor_tgid, uint32_t(writer));
  EXPECT_EQ(events[0].target_tid, uint32_t(child.pid()));
}

// The tracepoint hooks name a thread: one started before arming and one after both resolve.
TEST_F(BpfTriggersTest, AWriteNamingAThreadFindsItsProcess) {
  Pipe tids, go;
  Child child([&] {
    auto start = [&] {
      pthread_t t;
      pthread_create(&t, nullptr, [](void* p) -> void* {
        static_cast<Pipe*>(p)->send_int(gettid());
        sleep_forever();
      }, &tids);
    };
    start();
    go.receive();
    start();
    sleep_forever();
  });
  const pid_t before = tids.receive_int();
  arm(child.pid());
  go.send();
  const pid_t after = tids.receive_int();
  for (pid_t thread : {before, after}) {
    run_in_other_process([&] {
      char data[] = "x";
      iovec local{data, 1}, remote{const_cast<char*>(g_target_buffer), 1};
      return process_vm_writev(thread, &local, 1, &remote, 1, 0) == 1;
    });
    const auto events = log_->await([&](const mlfx_trigger_event& e) {
      return of(MLFX_EV_MEMORY_WRITE, child.pid())(e) && e.target_tid == uint32_t(thread);
    });
    EXPECT_EQ(events.size(), 1u) << "thread " << thread << (thread == before ? " (before arming)" : " (after)");
  }
}

TEST_F(BpfTriggersTest, AnUnarmedProcessProducesNothing) {
  Child child(sleep_forever);
  run_in_other_process([&] { return ptrace(PTRACE_SEIZE, child.pid(), 0, 0) == 0; });
  run_in_other_process([&] {
    char data[] = "x";
    iovec local{data, 1}, remote{const_cast<char*>(g_target_buffer), 1};
    return process_vm_writev(child.pid(), &local, 1, &remote, 1, 0) == 1;
  });
  ASSERT_EQ(kill(child.pid(), SIGSEGV), 0);
  (void)child.wait();
  EXPECT_TRUE(log_->collect(about(child.pid())).empty());
}

TEST_F(BpfTriggersTest, DisarmedProcessProducesNothing) {
  Child child(sleep_forever);
  arm(child.pid());
  ASSERT_TRUE(triggers_->disarm(child.pid()));
  ASSERT_EQ(kill(child.pid(), SIGSEGV), 0);
  (void)child.wait();
  EXPECT_TRUE(log_->collect(about(child.pid())).empty());
}

TEST_F(BpfTriggersTest, ExecIsReported) {
  Child child([] {
    execl("/bin/true", "true", nullptr);
    _exit(127);
  });
  const auto events = log_->await(of(MLFX_EV_EXEC, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(comm(events[0], true), "true");
  EXPECT_EQ(events[0].target_tid, uint32_t(child.pid()));
}

TEST_F(BpfTriggersTest, ExitOfAnArmedProcessIsReportedWithItsSignal) {
  Pipe go;
  Child exits([&] {
    go.receive();
    _exit(3);
  });
  arm(exits.pid(), MLFX_EV_EXIT);
  go.send();
  auto events = log_->await(of(MLFX_EV_EXIT, exits.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].signal, 0);

  Child killed(sleep_forever);
  arm(killed.pid(), MLFX_EV_EXIT);
  ASSERT_EQ(kill(killed.pid(), SIGKILL), 0);
  events = log_->await(of(MLFX_EV_EXIT, killed.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].signal, SIGKILL);
}

TEST_F(BpfTriggersTest, RingFdIsEpollableAndDrainHandsOverTheEvents) {
  Child child(sleep_forever);
  arm(child.pid());
  const int epfd = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(epfd, 0);
  epoll_event want{.events = EPOLLIN, .data = {}};
  ASSERT_EQ(epoll_ctl(epfd, EPOLL_CTL_ADD, triggers_->ring_fd(), &want), 0);
  ASSERT_EQ(kill(child.pid(), SIGSEGV), 0);
  std::vector<mlfx_trigger_event> mine;
  for (const auto deadline = Clock::now() + 3s; mine.empty() && Clock::now() < deadline;) {
    epoll_event ready{};
    if (epoll_wait(epfd, &ready, 1, 100) != 1) continue;
    auto drained = triggers_->drain([&](const mlfx_trigger_event& e) {
      if (of(MLFX_EV_FATAL_SIGNAL, child.pid())(e)) mine.push_back(e);
    });
    ASSERT_TRUE(drained) << drained.error().to_string();
  }
  close(epfd);
  ASSERT_EQ(mine.size(), 1u);
  EXPECT_EQ(mine[0].signal, SIGSEGV);
}

// The plain tracepoint form of the fatal-signal trigger, as on a kernel whose tp_btf hook is
// missing: a signal sent to a thread that is not the leader is resolved to its process.
TEST_F(BpfTriggersTest, FallbackSignalTracepointResolvesAThread) {
  auto opened = BpfTriggers::open({.agent_tgid = 0, .skip_programs = {"fatal_signal_btf"}});
  ASSERT_TRUE(opened) << opened.error().to_string();
  BpfTriggers& fallback = *opened;
  const Hook* hook = nullptr;
  const auto hooks = fallback.hooks();
  for (const auto& h : hooks)
    if (h.trigger == "fatal-signal") hook = &h;
  ASSERT_NE(hook, nullptr);
  EXPECT_EQ(hook->program, "fatal_signal_tp");
  EXPECT_TRUE(hook->available);
  EXPECT_NE(hook->reason.find("skipped"), std::string::npos) << hook->reason;

  Pipe tids;
  Child child([&] {
    pthread_t t;
    pthread_create(&t, nullptr, [](void* p) -> void* {
      static_cast<Pipe*>(p)->send_int(gettid());
      sleep_forever();
    }, &tids);
    sleep_forever();
  });
  const pid_t thread = tids.receive_int();
  ASSERT_TRUE(fallback.arm(child.pid(), MLFX_EV_FATAL_SIGNAL));
  ASSERT_EQ(syscall(SYS_tgkill, child.pid(), thread, SIGSEGV), 0);
  EventLog log(fallback);
  const auto events = log.await(of(MLFX_EV_FATAL_SIGNAL, child.pid()));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].target_tid, uint32_t(thread));
  EXPECT_EQ(events[0].signal, SIGSEGV);
  EXPECT_EQ(events[0].si_code, SI_TKILL);
  EXPECT_EQ(events[0].actor_tgid, uint32_t(getpid()));
}

// A storm: more attach attempts than the ring buffer holds, none read meanwhile. The ring stays
// bounded, every attempt is either delivered or counted as lost, and the rest still arrive.
TEST_F(BpfTriggersTest, AStormFillsTheRingAndCountsWhatItLost) {
  auto opened = BpfTriggers::open({.agent_tgid = 0, .skip_programs = {}});  // no exec events
  ASSERT_TRUE(opened) << opened.error().to_string();
  BpfTriggers& storm = *opened;
  Child child(sleep_forever);
  ASSERT_TRUE(storm.arm(child.pid(), MLFX_EV_PTRACE_ATTACH));
  ASSERT_EQ(ptrace(PTRACE_SEIZE, child.pid(), 0, 0), 0);
  constexpr int kAttempts = 3000;
  for (int i = 1; i < kAttempts; ++i) ASSERT_NE(ptrace(PTRACE_SEIZE, child.pid(), 0, 0), 0);  // already traced
  EventLog log(storm);
  const auto delivered = log.collect(of(MLFX_EV_PTRACE_ATTACH, child.pid()), 300ms).size();
  EXPECT_GT(storm.lost_events(), 0u);
  EXPECT_EQ(delivered + storm.lost_events(), uint64_t(kAttempts));
  EXPECT_EQ(log.matching([](const mlfx_trigger_event&) { return true; }).size(), delivered);
}

TEST_F(BpfTriggersTest, WithoutCapabilitiesOpeningIsRefusedWithPermission) {
  Child child([] {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct caps[2]{};
    if (syscall(SYS_capget, &header, caps) != 0) _exit(2);
    for (int cap : {21 /* SYS_ADMIN */, 38 /* PERFMON */, 39 /* BPF */}) caps[cap / 32].effective &= ~(1u << (cap % 32));
    if (syscall(SYS_capset, &header, caps) != 0) _exit(3);
    auto opened = BpfTriggers::open({});
    _exit(!opened && opened.error().code() == Errc::kPermission &&
                  opened.error().message().find("root") != std::string::npos
              ? 0
              : 1);
  });
  const int status = child.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

// ---- OOM kill in a memory-limited cgroup ------------------------------------------------------

// A fresh memory cgroup with a limit (v2 memory.max where the unified hierarchy has the memory
// controller, else v1 memory.limit_in_bytes), removed when done.
class MemoryCgroup {
 public:
  explicit MemoryCgroup(uint64_t limit) {
    const std::string name = "mlfx-bpf-test-" + std::to_string(getpid());
    for (const char* root : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
      if (has_v2_memory(root)) {
        path_ = std::string(root) + "/" + name;
        if (mkdir(path_.c_str(), 0755) == 0 && write("memory.max", std::to_string(limit)) &&
            write("memory.swap.max", "0", true))
          return;
        remove();
      }
    }
    if (access("/sys/fs/cgroup/memory/memory.limit_in_bytes", F_OK) == 0) {
      path_ = "/sys/fs/cgroup/memory/" + name;
      if (mkdir(path_.c_str(), 0755) == 0 && write("memory.limit_in_bytes", std::to_string(limit)) &&
          write("memory.memsw.limit_in_bytes", std::to_string(limit), true))
        return;
      remove();
    }
    path_.clear();
  }
  ~MemoryCgroup() { remove(); }
  bool ok() const { return !path_.empty(); }
  bool add(pid_t pid) { return write("cgroup.procs", std::to_string(pid)); }

 private:
  static bool has_v2_memory(const std::string& root) {
    std::ifstream controllers(root + "/cgroup.controllers");
    std::string word;
    bool listed = false;
    while (controllers >> word) listed |= word == "memory";
    return listed;
  }
  bool write(const std::string& file, const std::string& value, bool optional = false) {
    std::ofstream out(path_ + "/" + file);
    if (!out) return optional;
    out << value;
    out.flush();
    return bool(out) || optional;
  }
  void remove() {
    if (!path_.empty()) rmdir(path_.c_str());
  }
  std::string path_;
};

TEST_F(BpfTriggersTest, OomKillInAMemoryLimitedCgroupIsReported) {
  MemoryCgroup cgroup(64u << 20);
  if (!cgroup.ok()) GTEST_SKIP() << "no memory cgroup could be made (neither v2 memory.max nor v1 memory.limit_in_bytes)";
  Pipe go;
  Child child([&] {
    go.receive();
    const size_t size = 256u << 20;
    char* p = static_cast<char*>(malloc(size));
    for (size_t i = 0; p && i < size; i += 4096) p[i] = 1;
    _exit(0);  // not reached: the OOM killer ends it
  });
  ASSERT_TRUE(cgroup.add(child.pid()));
  arm(child.pid(), MLFX_EV_OOM_KILL);
  go.send();
  const auto events = log_->await(of(MLFX_EV_OOM_KILL, child.pid()), 10s);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].target_tid, uint32_t(child.pid()));
  const int status = child.wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
}

}  // namespace
}  // namespace mlfx::agent::bpf
