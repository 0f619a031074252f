// The daemon's holder (agent/daemon/ptrace_holder.h) on real processes: a forked child with
// several threads is held, faults, is caught with every thread stopped and its memory still
// readable, and then dies of its own signal; ordinary signals and handled faults pass through;
// jobs stop and resume it; dropping the holder lets it go.
#include "daemon/ptrace_holder.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <string>

#include "capture/process/procfs.h"

namespace mlfx::agent::daemon {
namespace {

volatile uint64_t g_marker = 0;
// Address 8: never mapped. Through a volatile pointer, so the compiler neither warns nor drops it.
volatile int* volatile g_unmapped = reinterpret_cast<volatile int*>(8);  // the child writes a value here; the capture must read it
volatile int g_usr1 = 0;

// A child that waits for one-letter commands on `in` and answers on `out`:
//   S: fault (SIGSEGV)  A: abort()  T: start a thread that faults  P: ping (answers 'p')
//   U: raise SIGUSR1 (handled; answers 'u' with the count)   H: fault with a handler (exit 42)
struct Child {
  pid_t pid = 0, middle = 0;
  int to = -1, from = -1, report = -1;

  Child() = default;
  Child(Child&& o) noexcept : pid(o.pid), middle(o.middle), to(o.to), from(o.from), report(o.report) {
    o.middle = 0;
    o.to = o.from = o.report = -1;
  }

  static void* idle(void*) {
    while (true) pause();
    return nullptr;
  }
  static void* fault(void*) {
    *g_unmapped = 1;
    return nullptr;
  }
  static void on_usr1(int) { g_usr1 = g_usr1 + 1; }
  static void on_segv(int) { _exit(42); }

  // The worker is a grandchild: a process whose parent is in the tracer's own thread group is
  // reaped by the tracer (the kernel's rule), so its parent is a middle process that waits for
  // it and reports its status on a pipe: an observer independent of the holder.
  static Child spawn() {
    int down[2], up[2], report[2];
    if (pipe(down) || pipe(up) || pipe(report)) std::abort();
    Child c;
    c.middle = fork();
    if (c.middle == 0) {
      pid_t worker = fork();
      if (worker == 0) run(down[0], up[1]);
      (void)!write(report[1], &worker, sizeof worker);
      int status = 0;
      while (waitpid(worker, &status, 0) < 0 && errno == EINTR) {
      }
      (void)!write(report[1], &status, sizeof status);
      _exit(0);
    }
    close(down[0]);
    close(up[1]);
    close(report[1]);
    c.to = down[1];
    c.from = up[0];
    c.report = report[0];
    EXPECT_EQ(read(c.report, &c.pid, sizeof c.pid), static_cast<ssize_t>(sizeof c.pid));
    // Wait until its threads exist and the marker is set.
    EXPECT_EQ(c.ask('P'), 'p');
    return c;
  }

  [[noreturn]] static void run(int in, int out) {
    rlimit none{0, 0};
    setrlimit(RLIMIT_CORE, &none);  // no core files from the test's crashes
    sigset_t all;
    sigemptyset(&all);
    pthread_sigmask(SIG_SETMASK, &all, nullptr);
    signal(SIGUSR1, on_usr1);
    for (int i = 0; i < 3; ++i) {
      pthread_t t;
      pthread_create(&t, nullptr, idle, nullptr);
    }
    g_marker = 0x6d6c66782d686f6cull;  // "mlfx-hol"
    char cmd;
    while (read(in, &cmd, 1) == 1) {
      if (cmd == 'S') *g_unmapped = 1;
      if (cmd == 'A') abort();
      if (cmd == 'T') {
        pthread_t t;
        pthread_create(&t, nullptr, fault, nullptr);
      }
      if (cmd == 'H') {
        signal(SIGSEGV, on_segv);
        *g_unmapped = 1;
      }
      if (cmd == 'U') {
        raise(SIGUSR1);
        char n = static_cast<char>('0' + g_usr1);
        (void)!write(out, &n, 1);
      }
      if (cmd == 'P') (void)!write(out, "p", 1);
    }
    _exit(0);
  }
  void send(char cmd) const { ASSERT_EQ(write(to, &cmd, 1), 1); }
  char ask(char cmd) const {
    send(cmd);
    char r = 0;
    return read(from, &r, 1) == 1 ? r : 0;
  }
  // The worker's wait status, as its parent saw it.
  int wait_status() const {
    int status = -1;
    EXPECT_EQ(read(report, &status, sizeof status), static_cast<ssize_t>(sizeof status));
    return status;
  }
  ~Child() {
    if (to >= 0) close(to);
    if (from >= 0) close(from);
    if (report >= 0) close(report);
    if (middle > 0) waitpid(middle, nullptr, __WNOTHREAD);
  }
};

std::string thread_states(pid_t pid) {
  std::string states;
  auto tids = process::list_threads(pid);
  if (!tids) return "?";
  for (pid_t tid : *tids) {
    auto stat = process::read_proc_file(process::task_path(pid, tid, "stat"), 4096);
    auto st = stat ? process::parse_proc_stat(*stat) : Result<process::ProcStat>(fail(Errc::kIo, "x"));
    states += st ? st->state : '?';
  }
  return states;
}

uint64_t read_marker(pid_t pid) {
  uint64_t v = 0;
  iovec local{&v, sizeof v}, remote{const_cast<uint64_t*>(&g_marker), sizeof v};
  return process_vm_readv(pid, &local, 1, &remote, 1, 0) == sizeof v ? v : 0;
}

std::string tracer_of(pid_t pid) {
  auto status = process::read_proc_file(process::proc_path(pid, "status"), 1 << 16);
  auto t = status ? process::status_field(*status, "TracerPid") : std::nullopt;
  return t ? *t : "?";
}

class PtraceHolderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, nullptr);  // the holder reads it from a signalfd
  }
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (ptrace of a child is allowed, but /proc/PID/mem "
                                        "reads of a traced child under Yama need CAP_SYS_PTRACE)";
  }
  const std::set<int> kFatal{SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
};

struct Caught {
  FatalSignal signal;
  std::string states;
  uint64_t marker = 0;
  size_t threads = 0;
};

TEST_F(PtraceHolderTest, AFaultIsCaughtWithEveryThreadStoppedThenTheProcessDiesOfIt) {
  std::promise<Caught> caught;
  std::promise<std::string> gone;
  auto holder = PtraceHolder::start(
      [&](const FatalSignal& f, const PtraceHolder::Stopped& s) {
        Caught c{f, thread_states(s.pid()), read_marker(s.pid()), s.freezer().threads().size()};
        caught.set_value(c);
      },
      [&](pid_t, const std::string& how) { gone.set_value(how); });
  ASSERT_TRUE(holder) << holder.error().message();
  Child child = Child::spawn();
  ASSERT_TRUE((*holder)->hold(child.pid, kFatal)) << "hold";
  EXPECT_NE(tracer_of(child.pid), "0");
  EXPECT_EQ(child.ask('P'), 'p') << "a held process runs on";
  child.send('S');
  auto fut = caught.get_future();
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "the fault was not caught";
  Caught c = fut.get();
  EXPECT_EQ(c.signal.pid, child.pid);
  EXPECT_EQ(c.signal.tid, child.pid);
  EXPECT_EQ(c.signal.signal, SIGSEGV);
  EXPECT_GT(c.signal.si_code, 0) << "a fault is sent by the kernel";
  EXPECT_EQ(c.signal.fault_address, 8u);
  EXPECT_GE(c.signal.frozen_ns, c.signal.stopped_ns);
  EXPECT_EQ(c.threads, 4u);
  EXPECT_EQ(c.states, "tttt") << "every thread stopped while captured";
  EXPECT_EQ(c.marker, 0x6d6c66782d686f6cull) << "the memory is still there";
  int status = child.wait_status();
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGSEGV) << "it dies of its own signal after the capture";
  EXPECT_EQ(gone.get_future().get(), "killed by signal 11");
  EXPECT_TRUE((*holder)->held().empty());
}

TEST_F(PtraceHolderTest, AbortAndAFaultInAThreadBornAfterTheHoldAreCaughtToo) {
  for (char cmd : {'A', 'T'}) {
    std::promise<FatalSignal> caught;
    auto holder = PtraceHolder::start([&](const FatalSignal& f, const PtraceHolder::Stopped&) { caught.set_value(f); },
                                      nullptr);
    ASSERT_TRUE(holder);
    Child child = Child::spawn();
    ASSERT_TRUE((*holder)->hold(child.pid, kFatal));
    child.send(cmd);
    auto fut = caught.get_future();
    ASSERT_EQ(fut.wait_for(std::chrono::seconds(10)), std::future_status::ready) << cmd;
    FatalSignal f = fut.get();
    EXPECT_EQ(f.signal, cmd == 'A' ? SIGABRT : SIGSEGV);
    if (cmd == 'T') {
      EXPECT_NE(f.tid, child.pid) << "the new thread faulted";
    }
    if (cmd == 'A') {
      EXPECT_LE(f.si_code, 0) << "abort() sends the signal itself";
    }
    int status = child.wait_status();
    ASSERT_TRUE(WIFSIGNALED(status));
    EXPECT_EQ(WTERMSIG(status), f.signal);
  }
}

TEST_F(PtraceHolderTest, OrdinarySignalsAndHandledFaultsPassThrough) {
  std::atomic<int> fatal{0};
  auto holder = PtraceHolder::start([&](const FatalSignal&, const PtraceHolder::Stopped&) { ++fatal; }, nullptr);
  ASSERT_TRUE(holder);
  Child child = Child::spawn();
  ASSERT_TRUE((*holder)->hold(child.pid, kFatal));
  EXPECT_EQ(child.ask('U'), '1') << "SIGUSR1 reached its handler";
  EXPECT_EQ(child.ask('U'), '2');
  child.send('H');  // SIGSEGV with a handler: not about to die, so not held
  int status = child.wait_status();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 42);
  EXPECT_EQ(fatal.load(), 0);
}

TEST_F(PtraceHolderTest, AJobRunsWithTheProcessStoppedWhichRunsOnAfterwards) {
  auto holder = PtraceHolder::start(nullptr, nullptr);
  ASSERT_TRUE(holder);
  Child child = Child::spawn();
  ASSERT_TRUE((*holder)->hold(child.pid, kFatal));
  std::promise<std::string> states;
  (*holder)->post([&](PtraceHolder::Jobs& jobs) {
    std::string seen;
    Status st = jobs.with_stopped(child.pid, [&](const PtraceHolder::Stopped& s) { seen = thread_states(s.pid()); });
    states.set_value(st ? seen : st.error().message());
  });
  EXPECT_EQ(states.get_future().get(), "tttt");
  EXPECT_EQ(child.ask('P'), 'p') << "it runs again after the job";
  EXPECT_EQ(child.ask('U'), '1');
  ASSERT_TRUE((*holder)->release(child.pid));
  EXPECT_EQ(tracer_of(child.pid), "0");
  EXPECT_EQ(child.ask('P'), 'p');
  kill(child.pid, SIGKILL);
  child.wait_status();
}

TEST_F(PtraceHolderTest, DroppingTheHolderLetsTheProcessGo) {
  Child child = Child::spawn();
  {
    auto holder = PtraceHolder::start(nullptr, nullptr);
    ASSERT_TRUE(holder);
    ASSERT_TRUE((*holder)->hold(child.pid, kFatal));
    EXPECT_NE(tracer_of(child.pid), "0");
  }
  EXPECT_EQ(tracer_of(child.pid), "0");
  EXPECT_EQ(child.ask('P'), 'p');
  kill(child.pid, SIGKILL);
  child.wait_status();
}

}  // namespace
}  // namespace mlfx::agent::daemon
