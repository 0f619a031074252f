// mlfx-agent capture run as an operator would, against real victims: /usr/bin/python3 with
// threads and a buffer of known random bytes (and a torch model when python3-torch is
// installed). The evidence is checked with mlfx (verify, open), gdb, and an independent ELF
// reader; the victim must run on unharmed.
#include <fcntl.h>
#include <signal.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "elf_core_reader.h"
#include "mlfx/base/json.h"
#include "test_util.h"

namespace mlfx {
namespace {

using testing::run;
namespace fs = std::filesystem;

// Debian's interpreter (3.11, with python3-torch), not whatever python3 is first on PATH.
constexpr char kPython[] = "/usr/bin/python3";

// Threads: the main one (writes a counter file), two that sleep, one that computes. The
// random bytes and their address (CPython 3.11: a bytes object's data is 32 bytes past id())
// go to files outside the capture.
constexpr char kPythonVictim[] = R"PY(
import os, sys, threading, time
d = sys.argv[1]
data = os.urandom(8 * 1024 * 1024 + 777)
with open(d + "/truth.bin", "wb") as f:
    f.write(data)
with open(d + "/addr.txt", "w") as f:
    f.write(str(id(data) + 32))
def sleeper():
    while True:
        time.sleep(0.003)
def spinner():
    x = 1
    while True:
        x = (x * 31 + 7) % 1000003
for target in (sleeper, sleeper, spinner):
    threading.Thread(target=target, daemon=True).start()
open(d + "/ready", "w").close()
n = 0
while True:
    n += 1
    with open(d + "/counter.tmp", "w") as f:
        f.write(str(n))
    os.replace(d + "/counter.tmp", d + "/counter")
    time.sleep(0.005)
)PY";

constexpr char kTorchVictim[] = R"PY(
import os, sys, time
import torch
d = sys.argv[1]
torch.manual_seed(0)
torch.set_num_threads(2)
model = torch.nn.Linear(512, 256)
with torch.no_grad():
    y = model(torch.randn(256, 512))
    z = torch.mm(torch.randn(1024, 1024), torch.randn(1024, 1024))  # starts the intra-op pool
open(d + "/ready", "w").close()
n = 0
while True:
    n += 1
    with open(d + "/counter.tmp", "w") as f:
        f.write(str(n))
    os.replace(d + "/counter.tmp", d + "/counter")
    time.sleep(0.005)
)PY";

std::string agent_bin() {
#ifdef MLFX_AGENT_PATH
  return MLFX_AGENT_PATH;
#else
  const char* dir = std::getenv("MLFX_BIN");
  return std::string(dir ? dir : ".") + "/../agent/mlfx-agent";
#endif
}

std::set<pid_t> task_ids(pid_t pid) {
  std::set<pid_t> tids;
  for (const auto& name : testing::list_dir("/proc/" + std::to_string(pid) + "/task"))
    tids.insert(std::stoi(name));
  return tids;
}

char proc_state(pid_t pid) {
  std::string stat = testing::read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
}

// A victim process: /usr/bin/python3 SCRIPT DIR, ready once DIR/ready exists.
class Victim {
 public:
  ~Victim() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  ::testing::AssertionResult start(const std::string& script, const std::string& dir,
                                   std::chrono::seconds timeout) {
    dir_ = dir;
    const std::string path = dir + "/victim.py";
    testing::write_file(path, script);
    pid_ = fork();
    if (pid_ == 0) {
      int log = open((dir + "/victim.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(log, 1);
      dup2(log, 2);
      execl(kPython, kPython, path.c_str(), dir.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!fs::exists(dir + "/ready")) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return ::testing::AssertionFailure() << "victim exited: " << testing::read_file(dir + "/victim.log");
      }
      if (std::chrono::steady_clock::now() > deadline)
        return ::testing::AssertionFailure() << "victim not ready: " << testing::read_file(dir + "/victim.log");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return ::testing::AssertionSuccess();
  }
  pid_t pid() const { return pid_; }
  long counter() const { return std::atol(testing::read_file(dir_ + "/counter").c_str()); }
  bool alive() const {
    int status;
    return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
  }
  // Alive, not stopped, and its main loop keeps counting.
  ::testing::AssertionResult runs_on() const {
    if (!alive()) return ::testing::AssertionFailure() << "victim died";
    char st = proc_state(pid_);
    if (st == 't' || st == 'T') return ::testing::AssertionFailure() << "victim left in state " << st;
    long c1 = counter();
    for (int i = 0; i < 300; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (counter() > c1 + 3) return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "counter stuck at " << c1;
  }

 private:
  pid_t pid_ = -1;
  std::string dir_;
};

struct GdbThread {
  pid_t lwp = 0;
  std::vector<std::string> frames;
  std::string text;
};

// `thread apply all bt` on the core, one entry per thread block.
std::vector<GdbThread> gdb_backtraces(const std::string& core, std::string* output) {
  auto r = run("gdb -nx -batch -iex 'set debuginfod enabled off' -ex 'thread apply all bt' " +
               std::string(kPython) + " " + core);
  *output = r.output;
  std::vector<GdbThread> threads;
  static const std::regex header(R"(^Thread \d+ \(.*\(LWP (\d+)\)\):)");
  std::istringstream in(r.output);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_search(line, m, header)) {
      threads.push_back({std::stoi(m[1]), {}, ""});
    } else if (!threads.empty() && line.rfind("#", 0) == 0) {
      threads.back().frames.push_back(line);
      threads.back().text += line + "\n";
    }
  }
  return threads;
}

class AgentCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(mlfx("keys gen --kind device --out " + (dir / "dev")).exit_code, 0);
    ASSERT_EQ(mlfx("keys gen --kind lab --out " + (dir / "lab")).exit_code, 0);
    fs::create_directory(dir / "victim");
  }
  testing::CommandResult mlfx(const std::string& args) { return run(testing::mlfx_bin() + " " + args); }
  testing::CommandResult agent(const std::string& args) { return run(agent_bin() + " " + args); }
  std::string capture_args(pid_t pid, const std::string& out) {
    return "capture --pid " + std::to_string(pid) + " --out " + out + " --device-key " + (dir / "dev.key") +
           " --recipient " + (dir / "lab.pub");
  }
  // Opens `bundle` into dir/open and checks that the PT_LOAD holding the victim's bytes
  // object holds exactly its ground truth (victim/truth.bin at victim/addr.txt).
  testing::ElfCoreView expect_ground_truth_in(const std::string& bundle, std::string* core_bytes) {
    auto open = mlfx("bundle open " + bundle + " --key " + (dir / "lab.key") + " --out " + (dir / "open") + " -q");
    EXPECT_EQ(open.exit_code, 0) << open.output;
    std::string& core = *core_bytes;
    core = testing::read_file(dir / "open/core");
    const std::string truth = testing::read_file(dir / "victim/truth.bin");
    const uint64_t addr = std::stoull(testing::read_file(dir / "victim/addr.txt"));
    testing::ElfCoreView view = testing::parse_elf_core(core);
    EXPECT_EQ(view.error, "");
    const auto* load = view.load_for(addr, truth.size());
    EXPECT_NE(load, nullptr) << "no PT_LOAD holds 0x" << std::hex << addr;
    if (load) {
      EXPECT_TRUE(core.compare(load->offset + (addr - load->vaddr), truth.size(), truth) == 0)
          << "the captured bytes differ from the ground truth";
    }
    return view;
  }
  testing::TempDir dir;
};

TEST_F(AgentCli, HelpAndUsageErrors) {
  EXPECT_EQ(agent("--help").exit_code, 0);
  auto h = agent("capture --help");
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.output.find("--recipient"), std::string::npos);
  EXPECT_EQ(agent("capture --out x.mlfx").exit_code, 2);
  EXPECT_EQ(agent(capture_args(1, dir / "x.mlfx") + " --source avml").exit_code, 2);  // no such source
  EXPECT_EQ(agent(capture_args(0, dir / "x.mlfx")).exit_code, 2);
  EXPECT_FALSE(fs::exists(dir / "x.mlfx"));
}

TEST_F(AgentCli, CapturesALivePythonProcess) {
  Victim v;
  ASSERT_TRUE(v.start(kPythonVictim, dir / "victim", std::chrono::seconds(30)));
  const std::set<pid_t> tids = task_ids(v.pid());
  ASSERT_EQ(tids.size(), 4u);

  const std::string bundle = dir / "case.mlfx";
  auto cap = agent(capture_args(v.pid(), bundle) + " --case CASE-9 --note 'live python' -q");
  ASSERT_EQ(cap.exit_code, 0) << cap.output;
  EXPECT_NE(cap.output.find("captured pid " + std::to_string(v.pid())), std::string::npos) << cap.output;
  // (3) The victim runs on: not stopped, counting, the same threads.
  EXPECT_TRUE(v.runs_on());
  EXPECT_EQ(task_ids(v.pid()), tids);

  // Intact; no trust store given, so the signer's identity is unverified (exit 5).
  auto ver = mlfx("bundle verify " + bundle);
  ASSERT_EQ(ver.exit_code, 5) << ver.output;
  EXPECT_NE(ver.output.find("INTACT, IDENTITY UNVERIFIED"), std::string::npos);

  // (1) The PT_LOAD holding the bytes object's data holds exactly the ground truth.
  std::string core;
  auto view = expect_ground_truth_in(bundle, &core);
  EXPECT_EQ(view.type, 4);  // ET_CORE
  const std::string truth = testing::read_file(dir / "victim/truth.bin");
  const uint64_t addr = std::stoull(testing::read_file(dir / "victim/addr.txt"));
  for (const auto& l : view.loads) EXPECT_EQ(l.offset % 4096, 0u);

  // (2) gdb opens the core and unwinds every thread, from the top frame down to its start.
  std::string gdb_out;
  auto threads = gdb_backtraces(dir / "open/core", &gdb_out);
  std::set<pid_t> lwps;
  for (const auto& t : threads) lwps.insert(t.lwp);
  EXPECT_EQ(lwps, tids) << gdb_out;
  for (const auto& t : threads) {
    EXPECT_GE(t.frames.size(), 3u) << "thread " << t.lwp << "\n" << gdb_out;
    EXPECT_NE(t.text.find("_PyEval_EvalFrameDefault"), std::string::npos) << t.text;
    const char* bottom = t.lwp == v.pid() ? "Py_RunMain" : "start_thread";
    EXPECT_NE(t.text.find(bottom), std::string::npos) << t.text;
  }

  // (4) The context stream.
  auto ctx = json::parse(testing::read_file(dir / "open/context"), "context");
  ASSERT_TRUE(ctx) << ctx.error().to_string();
  const json::Json& c = *ctx;
  utsname u;
  uname(&u);
  EXPECT_EQ(c["kernel"]["release"], u.release);
  EXPECT_EQ(c["kernel"]["machine"], u.machine);
  EXPECT_EQ(c["architecture"], u.machine);
  EXPECT_EQ(c["process"]["pid"], v.pid());
  EXPECT_EQ(c["process"]["comm"], "python3");
  EXPECT_EQ(c["process"]["exe"], fs::canonical(kPython).string());
  EXPECT_EQ(c["process"]["cmdline"], json::Json({kPython, dir / "victim/victim.py", dir / "victim"}));
  EXPECT_TRUE(std::regex_match(c["process"]["start_time_utc"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")));
  std::set<pid_t> ctx_tids;
  for (const auto& t : c["threads"]) ctx_tids.insert(t["tid"].get<pid_t>());
  EXPECT_EQ(ctx_tids, tids);
  EXPECT_EQ(c["threads"][0]["tid"], v.pid());
  ASSERT_GT(c["mappings"].size(), 20u);
  EXPECT_EQ(c["mappings"].size() + 1, view.loads.size() + 1);  // one PT_LOAD per mapping
  bool saw_data = false, saw_python_build_id = false;
  auto readelf = run("readelf -n " + std::string(kPython) + " | sed -n 's/.*Build ID: //p'");
  const std::string python_id = readelf.output.substr(0, readelf.output.find('\n'));
  for (const auto& m : c["mappings"]) {
    for (const char* k : {"start", "end", "perms", "offset", "path", "dev", "inode", "dumped"})
      ASSERT_TRUE(m.contains(k)) << k << " missing in " << m.dump();
    if (addr >= m["start"].get<uint64_t>() && addr < m["end"].get<uint64_t>()) saw_data = true;
    if (m["path"] == fs::canonical(kPython).string()) {
      ASSERT_TRUE(m.contains("build_id")) << m.dump();
      EXPECT_EQ(m["build_id"], python_id);
      saw_python_build_id = true;
    }
    if (m["perms"].get<std::string>()[0] != 'r') {
      EXPECT_FALSE(m["dumped"].get<bool>());
    }
  }
  EXPECT_TRUE(saw_data);
  EXPECT_TRUE(saw_python_build_id);
  for (const char* k : {"freeze_ms", "inspect_ms", "capture_ms", "thaw_ms", "frozen_ms"})
    EXPECT_GE(c["timings"][k].get<double>(), 0.0) << k;
  EXPECT_GT(c["timings"]["frozen_ms"].get<double>(), 0.0);
  EXPECT_GE(c["bytes"]["read"].get<uint64_t>(), truth.size());
  EXPECT_EQ(c["bytes"]["core"].get<uint64_t>(), core.size());
  for (const auto& u : c["unreadable"]) {
    EXPECT_LT(u["start"].get<uint64_t>(), u["end"].get<uint64_t>());
    EXPECT_FALSE(u["reason"].get<std::string>().empty());
  }

  // The manifest carries the summary; the custody log's 'acquired' event the details.
  auto manifest = json::parse(testing::read_file(dir / "open/manifest.json"), "manifest");
  ASSERT_TRUE(manifest);
  EXPECT_EQ((*manifest)["context"]["pid"], v.pid());
  EXPECT_EQ((*manifest)["context"]["threads"], 4);
  EXPECT_EQ((*manifest)["context"]["source"], "process");
  EXPECT_EQ((*manifest)["case_id"], "CASE-9");
  EXPECT_EQ((*manifest)["tool"]["command"], "agent capture");
  std::istringstream custody(testing::read_file(dir / "open/custody.jsonl"));
  std::string first;
  std::getline(custody, first);
  auto acquired = json::parse(first, "custody");
  ASSERT_TRUE(acquired);
  EXPECT_EQ((*acquired)["type"], "acquired");
  EXPECT_EQ((*acquired)["details"]["pid"], v.pid());
  EXPECT_TRUE((*acquired)["details"].contains("frozen_ms"));
  EXPECT_TRUE((*acquired)["details"].contains("bytes_read"));
}

// With a buffer far smaller than the target, reading waits for sealing while the target is
// frozen: slower, but the same exact core. The budget is recorded; a bad size is a usage error.
TEST_F(AgentCli, SmallBufferStillCapturesExactly) {
  Victim v;
  ASSERT_TRUE(v.start(kPythonVictim, dir / "victim", std::chrono::seconds(30)));
  EXPECT_EQ(agent(capture_args(v.pid(), dir / "x.mlfx") + " --buffer lots -q").exit_code, 2);
  EXPECT_FALSE(fs::exists(dir / "x.mlfx"));

  const std::string bundle = dir / "small.mlfx";
  auto cap = agent(capture_args(v.pid(), bundle) + " --buffer 4M -q");
  ASSERT_EQ(cap.exit_code, 0) << cap.output;
  EXPECT_TRUE(v.runs_on());
  std::string core;
  expect_ground_truth_in(bundle, &core);
  auto manifest = json::parse(testing::read_file(dir / "open/manifest.json"), "manifest");
  ASSERT_TRUE(manifest);
  EXPECT_EQ((*manifest)["tool"]["parameters"]["buffer_bytes"], 4u << 20);
  auto ctx = json::parse(testing::read_file(dir / "open/context"), "context");
  ASSERT_TRUE(ctx);
  EXPECT_GE((*ctx)["timings"]["sealed_after_thaw_ms"].get<double>(), 0.0);
}

// Capture into a spool for shipping: queued with its hash, nothing left in incoming/; a spool
// too small for the target's memory refuses before anything is frozen.
TEST_F(AgentCli, CapturesIntoTheSpoolWithinItsQuota) {
  Victim v;
  ASSERT_TRUE(v.start(kPythonVictim, dir / "victim", std::chrono::seconds(30)));
  const std::string keys = " --device-key " + (dir / "dev.key") + " --recipient " + (dir / "lab.pub");
  const std::string spool = dir / "spool";
  auto small = agent("capture --pid " + std::to_string(v.pid()) + " --spool " + spool + " --spool-quota 1M -q" + keys);
  EXPECT_EQ(small.exit_code, 1) << small.output;
  EXPECT_NE(small.output.find("quota"), std::string::npos) << small.output;
  EXPECT_TRUE(testing::list_dir(spool + "/incoming").empty());
  EXPECT_TRUE(v.runs_on());

  auto cap = agent("capture --pid " + std::to_string(v.pid()) + " --spool " + spool + " --spool-quota 4G -q" + keys);
  ASSERT_EQ(cap.exit_code, 0) << cap.output;
  EXPECT_TRUE(testing::list_dir(spool + "/incoming").empty());
  auto status = json::parse(agent("status --json --spool " + spool).output, "status");
  ASSERT_TRUE(status) << status.error().to_string();
  ASSERT_EQ((*status)["queue"].size(), 1u);
  const std::string queued = spool + "/queue/" + (*status)["queue"][0]["name"].get<std::string>();
  EXPECT_NE(cap.output.find(queued), std::string::npos) << cap.output;
  EXPECT_EQ(mlfx("bundle verify -q " + queued).exit_code, 5) << "intact, identity unverified";
  std::string core;
  expect_ground_truth_in(queued, &core);
  EXPECT_EQ(agent("capture --pid 1 --out x.mlfx --spool " + spool + keys).exit_code, 2) << "--out or --spool";
}

TEST_F(AgentCli, NonexistentPidFailsCleanly) {
  const pid_t pid_max = std::stoi(testing::read_file("/proc/sys/kernel/pid_max"));
  pid_t reaped = fork();
  if (reaped == 0) _exit(0);
  waitpid(reaped, nullptr, 0);
  for (pid_t pid : {pid_max, reaped}) {
    const std::string out = dir / ("gone-" + std::to_string(pid) + ".mlfx");
    auto r = agent(capture_args(pid, out) + " -q");
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("no such process"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out));
  }
}

TEST_F(AgentCli, RefusesAnExistingOutputAndWrongKeys) {
  Victim v;
  ASSERT_TRUE(v.start(kPythonVictim, dir / "victim", std::chrono::seconds(30)));
  testing::write_file(dir / "exists.mlfx", "keep me");
  auto r = agent(capture_args(v.pid(), dir / "exists.mlfx") + " -q");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("exists"), std::string::npos) << r.output;
  EXPECT_EQ(testing::read_file(dir / "exists.mlfx"), "keep me");

  auto lab_as_device = agent("capture --pid " + std::to_string(v.pid()) + " --out " + (dir / "a.mlfx") +
                             " --device-key " + (dir / "lab.key") + " --recipient " + (dir / "lab.pub") + " -q");
  EXPECT_EQ(lab_as_device.exit_code, 1);
  EXPECT_NE(lab_as_device.output.find("is a lab key"), std::string::npos) << lab_as_device.output;
  auto device_as_recipient = agent("capture --pid " + std::to_string(v.pid()) + " --out " + (dir / "b.mlfx") +
                                   " --device-key " + (dir / "dev.key") + " --recipient " + (dir / "dev.pub") + " -q");
  EXPECT_EQ(device_as_recipient.exit_code, 1);
  EXPECT_NE(device_as_recipient.output.find("is a device key"), std::string::npos) << device_as_recipient.output;
  EXPECT_FALSE(fs::exists(dir / "a.mlfx"));
  EXPECT_FALSE(fs::exists(dir / "b.mlfx"));
  EXPECT_TRUE(v.runs_on());
}

TEST_F(AgentCli, PtraceRefusedSaysWhatToDo) {
  if (geteuid() != 0 || run("command -v setpriv").exit_code != 0)
    GTEST_SKIP() << "needs root (to drop to an unprivileged user) and setpriv";
  Victim v;  // runs as root
  ASSERT_TRUE(v.start(kPythonVictim, dir / "victim", std::chrono::seconds(30)));
  // Keys owned by the unprivileged user, in a directory it may write.
  fs::create_directory(dir / "nobody");
  fs::permissions(dir.path(), fs::perms::all);
  fs::permissions(dir / "nobody", fs::perms::all);
  const std::string as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
  ASSERT_EQ(run(as_nobody + testing::mlfx_bin() + " keys gen --kind device --out " + (dir / "nobody/dev")).exit_code, 0);
  ASSERT_EQ(run(as_nobody + testing::mlfx_bin() + " keys gen --kind lab --out " + (dir / "nobody/lab")).exit_code, 0);
  const std::string out = dir / "nobody/denied.mlfx";
  auto r = run(as_nobody + agent_bin() + " capture --pid " + std::to_string(v.pid()) + " --out " + out +
               " --device-key " + (dir / "nobody/dev.key") + " --recipient " + (dir / "nobody/lab.pub") + " -q");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("ptrace refused"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("CAP_SYS_PTRACE"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(v.runs_on());
}

TEST_F(AgentCli, InterruptedCaptureReleasesTheTargetAndLeavesNoBundle) {
  Victim v;
  // 768 MiB of ballast makes the capture take long enough to interrupt.
  std::string script = kPythonVictim;
  script.insert(script.find("open(d + \"/ready\""), "ballast = bytearray(768 << 20)\n");
  ASSERT_TRUE(v.start(script, dir / "victim", std::chrono::seconds(30)));
  const std::string out = dir / "interrupted.mlfx";
  pid_t agent_pid = fork();
  if (agent_pid == 0) {
    int log = open((dir / "agent.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(log, 1);
    dup2(log, 2);
    const std::string cmd = "exec " + agent_bin() + " " + capture_args(v.pid(), out) + " -q";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Interrupt once the core is streaming.
  auto streamed = [&] {
    std::error_code ec;
    auto size = fs::file_size(out, ec);
    return !ec && size >= (16u << 20);
  };
  for (int i = 0; i < 2000 && !streamed(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(streamed()) << testing::read_file(dir / "agent.log");
  kill(agent_pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(agent_pid, &status, 0), agent_pid);
  const std::string log = testing::read_file(dir / "agent.log");
  ASSERT_TRUE(WIFEXITED(status)) << log;
  EXPECT_EQ(WEXITSTATUS(status), 1) << log;
  EXPECT_NE(log.find("interrupted"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(v.runs_on());
}

TEST_F(AgentCli, CapturesATorchProcess) {
  if (run(std::string(kPython) + " -c 'import torch'").exit_code != 0)
    GTEST_SKIP() << "python3-torch is not installed";
  Victim v;
  ASSERT_TRUE(v.start(kTorchVictim, dir / "victim", std::chrono::seconds(120)));
  const std::set<pid_t> tids = task_ids(v.pid());
  const std::string bundle = dir / "torch.mlfx";
  const auto t0 = std::chrono::steady_clock::now();
  auto cap = agent(capture_args(v.pid(), bundle) + " -q");
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(cap.exit_code, 0) << cap.output;
  std::printf("torch victim: %zu threads; mlfx-agent wall %.2f s\n%s", tids.size(), wall_s, cap.output.c_str());
  EXPECT_TRUE(v.runs_on());
  EXPECT_EQ(task_ids(v.pid()), tids);

  auto ver = mlfx("bundle verify -q " + bundle);
  ASSERT_EQ(ver.exit_code, 5) << ver.output;  // intact, identity unverified
  auto open = mlfx("bundle open " + bundle + " --key " + (dir / "lab.key") + " --out " + (dir / "open") + " -q");
  ASSERT_EQ(open.exit_code, 0) << open.output;
  auto ctx = json::parse(testing::read_file(dir / "open/context"), "context");
  ASSERT_TRUE(ctx);
  EXPECT_GT((*ctx)["mappings"].size(), 1000u);
  EXPECT_GT((*ctx)["bytes"]["read"].get<uint64_t>(), 300ull << 20);
  std::printf("context timings %s bytes %s\n", (*ctx)["timings"].dump().c_str(), (*ctx)["bytes"].dump().c_str());

  std::string gdb_out;
  auto threads = gdb_backtraces(dir / "open/core", &gdb_out);
  std::set<pid_t> lwps;
  for (const auto& t : threads) {
    lwps.insert(t.lwp);
    EXPECT_GE(t.frames.size(), 2u) << "thread " << t.lwp << "\n" << gdb_out;
  }
  EXPECT_EQ(lwps, tids) << gdb_out;
}

}  // namespace
}  // namespace mlfx
