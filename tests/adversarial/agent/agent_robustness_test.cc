// Issue 11, items 7 and 8 (agent): the real mlfx-agent against a target killed mid-capture, an
// agent killed mid-capture, a spool that is not the agent's own or has links planted in it,
// and the agent's own memory (not dumpable). Real python3 victims, real SIGKILLs.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "mlfx/base/json.h"
#include "test_util.h"

extern char** environ;

namespace mlfx {
namespace {

using testing::run;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr char kPython[] = "/usr/bin/python3";
constexpr uid_t kNobody = 65534;

// MiB of real (written) memory, then idle: a capture of it takes a while with a small buffer.
constexpr char kBigVictim[] = R"PY(
import os, sys, time
d, mib = sys.argv[1], int(sys.argv[2])
big = bytearray(os.urandom(1 << 20)) * mib
open(d + "/ready", "w").close()
while True:
    time.sleep(0.01)
)PY";

std::string agent_bin() { return MLFX_AGENT_PATH; }

// A child process (argv run directly, output to a log file), killed and reaped at scope exit.
class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool start(const std::vector<std::string>& args, const std::string& log) {
    log_ = log;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) pid_ = -1;
    return rc == 0;
  }
  pid_t pid() const { return pid_; }
  bool running() const {
    int status;
    return pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == 0;
  }
  // Exit code (128 + signal when killed), after waiting for it.
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string output() const { return testing::read_file(log_); }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

uint64_t file_size(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

char proc_state(pid_t pid) {
  std::string stat = testing::read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
}

// Polls `done` every millisecond until it holds or `timeout` passes.
template <class F>
bool wait_until(F done, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The first file in `dir` whose name starts with `prefix`, or "".
std::string first_file(const std::string& dir, const std::string& prefix) {
  for (const auto& n : testing::list_dir(dir))
    if (n.rfind(prefix, 0) == 0) return dir + "/" + n;
  return "";
}

class AgentRobustness : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(mlfx("keys gen --kind device --out " + (dir / "dev")).exit_code, 0);
    ASSERT_EQ(mlfx("keys gen --kind lab --out " + (dir / "lab")).exit_code, 0);
  }
  testing::CommandResult mlfx(const std::string& args) { return run(testing::mlfx_bin() + " " + args); }
  testing::CommandResult agent(const std::string& args) { return run(agent_bin() + " " + args); }
  // stdout alone (stderr to `err`), for JSON.
  testing::CommandResult agent_split(const std::string& args, const std::string& err) {
    return run("(" + agent_bin() + " " + args + " 2>" + err + ")");
  }
  std::vector<std::string> capture_argv(pid_t pid, const std::vector<std::string>& extra) {
    std::vector<std::string> a = {agent_bin(), "capture", "--pid", std::to_string(pid), "--device-key",
                                  dir / "dev.key", "--recipient", dir / "lab.pub", "-q"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // A python3 victim holding `mib` MiB of written memory.
  ::testing::AssertionResult start_victim(Child& v, int mib, const std::string& name) {
    const std::string d = dir / name;
    fs::create_directory(d);
    testing::write_file(d + "/victim.py", kBigVictim);
    if (!v.start({kPython, d + "/victim.py", d, std::to_string(mib)}, d + "/victim.log"))
      return ::testing::AssertionFailure() << "cannot start " << kPython;
    if (!wait_until([&] { return fs::exists(d + "/ready") || !v.running(); }, 60s) || !fs::exists(d + "/ready"))
      return ::testing::AssertionFailure() << "victim not ready: " << testing::read_file(d + "/victim.log");
    return ::testing::AssertionSuccess();
  }
  // Opens a bundle into dir/<out>: the context stream, manifest and custody log.
  struct Opened {
    json::Json context, manifest, acquired;
  };
  Opened open_bundle(const std::string& bundle, const std::string& out) {
    auto r = mlfx("bundle open " + bundle + " --key " + (dir / "lab.key") + " --out " + (dir / out) + " -q");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    Opened o;
    o.context = json::parse(testing::read_file(dir / (out + "/context")), "context").value_or(json::Json());
    o.manifest = json::parse(testing::read_file(dir / (out + "/manifest.json")), "manifest").value_or(json::Json());
    std::istringstream custody(testing::read_file(dir / (out + "/custody.jsonl")));
    std::string first;
    std::getline(custody, first);
    o.acquired = json::parse(first, "custody").value_or(json::Json());
    return o;
  }
  // Starts a capture of `victim` writing `watched`, and SIGKILLs `kill_pid` (the victim or the
  // agent) once `watched` holds `bytes`: the memory is then being read (the buffer is small, so
  // reading waits for sealing and the file grows while it goes on).
  ::testing::AssertionResult kill_during_capture(Child& capture, const std::vector<std::string>& argv,
                                                 const std::function<std::string()>& watched, uint64_t bytes,
                                                 const std::function<pid_t()>& kill_pid) {
    if (!capture.start(argv, dir / "capture.log")) return ::testing::AssertionFailure() << "cannot start the agent";
    std::string file;
    const bool reached = wait_until(
        [&] {
          file = watched();
          return (!file.empty() && file_size(file) >= bytes) || !capture.running();
        },
        60s);
    if (!reached || !capture.running())
      return ::testing::AssertionFailure() << "the capture ended before it could be interrupted: "
                                           << capture.output();
    ::kill(kill_pid(), SIGKILL);
    return ::testing::AssertionSuccess();
  }
  testing::TempDir dir;
};

// Issue 11 item 7: a target killed mid-capture gave a signed bundle, mostly zeros, and exit 0.
TEST_F(AgentRobustness, TargetKilledMidCaptureIsAPartialCaptureAndSaysSo) {
  Child victim, capture;
  ASSERT_TRUE(start_victim(victim, 320, "victim"));
  const std::string out = dir / "partial.mlfx";
  ASSERT_TRUE(kill_during_capture(capture, capture_argv(victim.pid(), {"--out", out, "--buffer", "8M"}),
                                  [&] { return out; }, 24u << 20, [&] { return victim.pid(); }));
  const int code = capture.wait();
  const std::string output = capture.output();
  EXPECT_EQ(code, 3) << output;
  EXPECT_NE(output.find("PARTIAL CAPTURE"), std::string::npos) << output;
  EXPECT_NE(output.find("killed by signal 9 (SIGKILL)"), std::string::npos) << output;
  EXPECT_NE(output.find("--allow-partial"), std::string::npos) << output;
  EXPECT_EQ(victim.wait(), 128 + SIGKILL) << "the victim was released to its parent";
  ASSERT_TRUE(fs::exists(out)) << "the partial bundle is kept: nothing else of that process is left";

  Opened o = open_bundle(out, "open");
  EXPECT_EQ(o.context["complete"], false);
  ASSERT_TRUE(o.context["target_exit"].is_object()) << o.context.dump();
  EXPECT_NE(o.context["target_exit"]["how"].get<std::string>().find("SIGKILL"), std::string::npos);
  const uint64_t lost = o.context["bytes"]["not_read_target_exited"].get<uint64_t>();
  EXPECT_GT(lost, 100u << 20) << "most of the 320 MiB was not read";
  EXPECT_EQ(o.context["target_exit"]["bytes_not_read"].get<uint64_t>(), lost);
  EXPECT_EQ(o.manifest["context"]["capture_complete"], false) << o.manifest.dump();
  EXPECT_EQ(o.manifest["context"]["bytes_not_read"].get<uint64_t>(), lost);
  EXPECT_EQ(o.acquired["type"], "acquired");
  EXPECT_EQ(o.acquired["details"]["complete"], false) << "the signed custody chain says so too";
  EXPECT_EQ(o.acquired["details"]["target_exit"]["bytes_not_read"].get<uint64_t>(), lost);

  // The lab's tools never show it as a complete capture.
  auto verify = mlfx("bundle verify " + out);
  EXPECT_NE(verify.output.find("(of an INCOMPLETE capture)"), std::string::npos) << verify.output;
  EXPECT_NE(verify.output.find(std::to_string(lost) + " bytes could not be read"), std::string::npos) << verify.output;
  EXPECT_NE(mlfx("bundle info " + out).output.find("INCOMPLETE capture"), std::string::npos);
  auto vj = json::parse(mlfx("bundle verify --json " + out).output, "verify");
  ASSERT_TRUE(vj) << vj.error().to_string();
  EXPECT_EQ((*vj)["capture_complete"], false);
  ASSERT_EQ(mlfx("report --out " + (dir / "report") + " --bundle " + out).exit_code, 0);
  auto report = json::parse(testing::read_file(dir / "report/report.json"), "report");
  ASSERT_TRUE(report) << report.error().to_string();
  EXPECT_EQ((*report)["verdict"]["capture"], "incomplete");
  EXPECT_NE(testing::read_file(dir / "report/report.html").find("INCOMPLETE capture"), std::string::npos);
}

// --allow-partial: exit 0, still recorded; and through the spool.
TEST_F(AgentRobustness, AllowPartialExitsZeroButTheBundleStillSaysPartial) {
  Child victim, capture;
  ASSERT_TRUE(start_victim(victim, 320, "victim"));
  const std::string spool = dir / "spool";
  ASSERT_TRUE(kill_during_capture(
      capture, capture_argv(victim.pid(), {"--spool", spool, "--buffer", "8M", "--allow-partial"}),
      [&] { return first_file(spool + "/incoming", "capture-"); }, 24u << 20, [&] { return victim.pid(); }));
  const int code = capture.wait();
  const std::string output = capture.output();
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("PARTIAL CAPTURE"), std::string::npos) << output;
  EXPECT_TRUE(testing::list_dir(spool + "/incoming").empty());
  auto status = json::parse(agent_split("status --json --spool " + spool, dir / "err").output, "status");
  ASSERT_TRUE(status) << status.error().to_string();
  ASSERT_EQ((*status)["queue"].size(), 1u);
  Opened o = open_bundle(spool + "/queue/" + (*status)["queue"][0]["name"].get<std::string>(), "open");
  EXPECT_EQ(o.context["complete"], false);
  EXPECT_EQ(o.manifest["context"]["capture_complete"], false);
  EXPECT_EQ(o.acquired["details"]["complete"], false);
}

// Issue 11 item 7: an agent killed mid-capture left incoming/capture-*.mlfx counted against the
// quota forever. A live capture's file is never taken for torn.
TEST_F(AgentRobustness, TornCaptureOfAKilledAgentIsRemovedAtOpenAndJournalled) {
  Child victim;
  ASSERT_TRUE(start_victim(victim, 160, "victim"));
  const std::string spool = dir / "spool";
  const std::string incoming = spool + "/incoming";

  // While a capture runs, another agent opening the spool leaves its file alone.
  {
    Child capture;
    ASSERT_TRUE(capture.start(capture_argv(victim.pid(), {"--spool", spool, "--buffer", "4M"}), dir / "c1.log"));
    ASSERT_TRUE(wait_until([&] { return !first_file(incoming, "capture-").empty() || !capture.running(); }, 60s));
    ASSERT_TRUE(capture.running()) << "the capture ended too soon: " << capture.output();
    auto during = agent("status --spool " + spool);
    EXPECT_EQ(during.exit_code, 0) << during.output;
    EXPECT_EQ(during.output.find("removed"), std::string::npos) << "a live capture was taken for torn: " << during.output;
    EXPECT_EQ(capture.wait(), 0) << capture.output();
    ASSERT_TRUE(testing::list_dir(incoming).empty());
    auto st = json::parse(agent_split("status --json --spool " + spool, dir / "err").output, "status");
    ASSERT_TRUE(st);
    ASSERT_EQ((*st)["queue"].size(), 1u);
    Opened o = open_bundle(spool + "/queue/" + (*st)["queue"][0]["name"].get<std::string>(), "open");
    EXPECT_EQ(o.context["complete"], true);
    EXPECT_EQ(o.manifest["context"]["capture_complete"], true);
    EXPECT_EQ(o.acquired["details"]["complete"], true);
  }
  auto before = json::parse(agent_split("status --json --spool " + spool, dir / "err").output, "status");
  ASSERT_TRUE(before);
  const uint64_t used_before = (*before)["used_bytes"].get<uint64_t>();

  // Kill the agent itself while it reads: its file stays behind, torn.
  Child capture;
  std::string torn;
  ASSERT_TRUE(kill_during_capture(capture, capture_argv(victim.pid(), {"--spool", spool, "--buffer", "4M"}),
                                  [&] { return torn = first_file(incoming, "capture-"); }, 8u << 20,
                                  [&] { return capture.pid(); }));
  EXPECT_EQ(capture.wait(), 128 + SIGKILL);
  ASSERT_FALSE(torn.empty());
  const uint64_t torn_size = file_size(torn);
  ASSERT_GT(torn_size, 0u);
  ASSERT_TRUE(wait_until([&] { char s = proc_state(victim.pid()); return s != 't' && s != 'T'; }, 5s))
      << "the kernel releases the victim when its tracer dies";

  auto r = agent_split("status --json --spool " + spool, dir / "notice");
  ASSERT_EQ(r.exit_code, 0) << r.output << testing::read_file(dir / "notice");
  const std::string notice = testing::read_file(dir / "notice");
  const std::string name = fs::path(torn).filename();
  EXPECT_NE(notice.find("removed incoming/" + name), std::string::npos) << notice;
  EXPECT_NE(notice.find("journal.jsonl"), std::string::npos) << notice;
  EXPECT_FALSE(fs::exists(torn));
  auto after = json::parse(r.output, "status");
  ASSERT_TRUE(after) << r.output;
  EXPECT_EQ((*after)["used_bytes"].get<uint64_t>(), used_before) << "the torn file no longer counts";
  std::istringstream journal(testing::read_file(spool + "/journal.jsonl"));
  std::string line;
  ASSERT_TRUE(std::getline(journal, line)) << "journalled";
  auto j = json::parse(line, "journal");
  ASSERT_TRUE(j) << line;
  EXPECT_EQ((*j)["action"], "removed");
  EXPECT_EQ((*j)["file"], "incoming/" + name);
  EXPECT_EQ((*j)["size"].get<uint64_t>(), torn_size);
  EXPECT_FALSE((*j)["utc"].get<std::string>().empty());
  EXPECT_FALSE(std::getline(journal, line)) << "once";
  auto again = agent("status --spool " + spool);
  EXPECT_EQ(again.output.find("removed"), std::string::npos) << again.output;
}

// A sound sealed bundle left in incoming/ (its agent died between sealing and queueing) is queued.
TEST_F(AgentRobustness, SealedBundleLeftInIncomingIsQueued) {
  const std::string spool = dir / "spool";
  ASSERT_EQ(agent("status --spool " + spool).exit_code, 0);
  testing::write_file(dir / "data", testing::random_string(100000, 7));
  auto seal = mlfx("bundle seal " + (dir / "data") + " --out " + (dir / "b.mlfx") + " --device-key " +
                   (dir / "dev.key") + " --recipient " + (dir / "lab.pub") + " -q");
  ASSERT_EQ(seal.exit_code, 0) << seal.output;
  fs::copy_file(dir / "b.mlfx", spool + "/incoming/capture-1-999999.mlfx");
  auto r = agent_split("status --json --spool " + spool, dir / "notice");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(testing::read_file(dir / "notice").find("queued incoming/capture-1-999999.mlfx"), std::string::npos)
      << testing::read_file(dir / "notice");
  auto st = json::parse(r.output, "status");
  ASSERT_TRUE(st);
  EXPECT_EQ((*st)["queue"].size(), 1u);
  EXPECT_TRUE(testing::list_dir(spool + "/incoming").empty());
  auto j = json::parse(testing::read_file(spool + "/journal.jsonl"), "journal");
  ASSERT_TRUE(j);
  EXPECT_EQ((*j)["action"], "queued");
}

// Issue 11 item 7: the spool must be the agent's own and follow no links.
TEST_F(AgentRobustness, SpoolNotOwnedOrWritableByOthersIsRefused) {
  const std::string spool = dir / "spool";
  ASSERT_EQ(agent("status --spool " + spool).exit_code, 0);

  ::chmod(spool.c_str(), 0777);
  auto r = agent("status --spool " + spool);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("writable by others"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("chmod go-w " + spool), std::string::npos) << r.output;
  ::chmod(spool.c_str(), 0750);

  ::chmod((spool + "/queue").c_str(), 0770);
  r = agent("status --spool " + spool);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(spool + "/queue is writable by its group"), std::string::npos) << r.output;
  ::chmod((spool + "/queue").c_str(), 0750);

  ASSERT_EQ(::chown(spool.c_str(), kNobody, kNobody), 0);
  r = agent("status --spool " + spool);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("owned by uid 65534"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("chown"), std::string::npos) << r.output;
  ASSERT_EQ(::chown(spool.c_str(), 0, 0), 0);
  EXPECT_EQ(agent("status --spool " + spool).exit_code, 0);
}

TEST_F(AgentRobustness, LinksInsideTheSpoolAreNeverFollowed) {
  const std::string spool = dir / "spool";
  ASSERT_EQ(agent("status --spool " + spool).exit_code, 0);
  // A sound bundle elsewhere, linked into the queue: neither listed, counted, read nor shipped.
  testing::write_file(dir / "data", testing::random_string(50000, 3));
  ASSERT_EQ(mlfx("bundle seal " + (dir / "data") + " --out " + (dir / "elsewhere.mlfx") + " --device-key " +
                 (dir / "dev.key") + " --recipient " + (dir / "lab.pub") + " -q").exit_code, 0);
  const std::string original = testing::read_file(dir / "elsewhere.mlfx");
  fs::create_symlink(dir / "elsewhere.mlfx", spool + "/queue/x.mlfx");
  auto r = agent_split("status --json --spool " + spool, dir / "notice");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto st = json::parse(r.output, "status");
  ASSERT_TRUE(st) << r.output;
  EXPECT_TRUE((*st)["queue"].empty()) << r.output;
  EXPECT_EQ((*st)["used_bytes"].get<uint64_t>(), 0u);
  EXPECT_NE(testing::read_file(dir / "notice").find("ignoring queue/x.mlfx"), std::string::npos)
      << testing::read_file(dir / "notice");
  EXPECT_EQ(testing::read_file(dir / "elsewhere.mlfx"), original);
  fs::remove(spool + "/queue/x.mlfx");

  // A link planted at a subdirectory: captures would land elsewhere. Refused.
  fs::create_directory(dir / "other");
  fs::rename(spool + "/incoming", dir / "old-incoming");
  fs::create_directory_symlink(dir / "other", spool + "/incoming");
  r = agent("status --spool " + spool);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(spool + "/incoming is a symbolic link"), std::string::npos) << r.output;
  r = agent("capture --pid 1 --spool " + spool + " --device-key " + (dir / "dev.key") + " --recipient " +
            (dir / "lab.pub") + " -q");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(testing::list_dir(dir / "other").empty()) << "nothing written through the link";

  // The spool itself given as a link is refused as well.
  fs::create_directory_symlink(dir / "other", dir / "spool-link");
  r = agent("status --spool " + (dir / "spool-link"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("symbolic link"), std::string::npos) << r.output;
}

// Issue 11 item 8: the agent holds the device key and the target's plaintext: not dumpable, so
// no core dump of it and no ptrace or /proc/PID/mem by other processes of its user. The kernel
// shows it by giving root the process's /proc/PID files (environ, mem, fd/) while the process
// runs as another user.
TEST_F(AgentRobustness, AgentIsNotDumpable) {
  if (::access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "no setpriv";
  ASSERT_EQ(::chmod(dir.path().c_str(), 0711), 0);
  const std::string spool = dir / "spool";
  ASSERT_EQ(::mkdir(spool.c_str(), 0750), 0);
  ASSERT_EQ(::chown(spool.c_str(), kNobody, kNobody), 0);
  // ship without an intake retries forever: a long-running agent.
  Child ship;
  ASSERT_TRUE(ship.start({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", agent_bin(),
                          "ship", "--spool", spool, "--server", "127.0.0.1:9", "--ca", dir / "none.pem", "--cert",
                          dir / "none.pem", "--key", dir / "none.key", "--backoff-min", "5"},
                         dir / "ship.log"));
  const std::string proc = "/proc/" + std::to_string(ship.pid());
  // Wait until setpriv has become the agent and it has started its loop.
  ASSERT_TRUE(wait_until([&] { return testing::read_file(proc + "/comm").rfind("mlfx-agent", 0) == 0 &&
                                      fs::exists(spool + "/queue"); },
                         10s))
      << ship.output();
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(ship.running()) << ship.output();
  const std::string status = testing::read_file(proc + "/status");
  EXPECT_NE(status.find("\nUid:\t65534\t65534"), std::string::npos) << status;
  for (const char* leaf : {"/environ", "/mem"}) {
    struct stat st;
    ASSERT_EQ(::stat((proc + leaf).c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 0u) << proc + leaf << ": a dumpable process's files there belong to its own user (65534)";
  }
}

}  // namespace
}  // namespace mlfx
