// mlfx-agent capture --source gpu,process as an operator runs it, against fake_cuda_target (a
// process that does with the coredump variables what the CUDA driver documents; no GPU here):
// the dump arrives in the bundle byte for byte, the context records how, and every failure is
// clear, leaves no FIFO behind, no bundle, and the target running.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "mlfx/base/json.h"
#include "test_util.h"

namespace mlfx {
namespace {

using testing::run;
namespace fs = std::filesystem;

std::string agent_bin() { return MLFX_AGENT_PATH; }

char proc_state(pid_t pid) {
  std::string stat = testing::read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
}

// fake_cuda_target with the given environment on top of ours; ready once its pipe exists.
class FakeTarget {
 public:
  ~FakeTarget() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  ::testing::AssertionResult start(const std::string& dir, const std::vector<std::string>& env,
                                   const std::vector<std::string>& args) {
    const std::string ready = dir + "/fake.ready";
    log_ = dir + "/fake.log";
    std::vector<std::string> argv = {FAKE_CUDA_TARGET, "--ready", ready};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = fork();
    if (pid_ == 0) {
      for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
      int log = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(log, 1);
      dup2(log, 2);
      std::vector<char*> a;
      for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
    for (int i = 0; i < 3000 && !fs::exists(ready); ++i) {
      if (!alive())
        return ::testing::AssertionFailure()
               << "the fake target exited: " << testing::read_file(log_);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!fs::exists(ready)) return ::testing::AssertionFailure() << "the fake target is not ready";
    return ::testing::AssertionSuccess();
  }
  pid_t pid() const { return pid_; }
  bool alive() const {
    int status;
    return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
  }
  std::string log() const { return testing::read_file(log_); }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

class GpuCaptureCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(mlfx("keys gen --kind device --out " + (dir / "dev")).exit_code, 0);
    ASSERT_EQ(mlfx("keys gen --kind lab --out " + (dir / "lab")).exit_code, 0);
    // The driver's facts, as /proc/driver/nvidia shows them on an H100 host.
    fs::create_directories(nvidia + "/gpus/0000:01:00.0");
    testing::write_file(nvidia + "/version",
                        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06\n");
    testing::write_file(nvidia + "/gpus/0000:01:00.0/information",
                        "Model: \t\t NVIDIA H100 80GB HBM3\n");
  }
  testing::CommandResult mlfx(const std::string& args) {
    return run(testing::mlfx_bin() + " " + args);
  }
  testing::CommandResult agent(const std::string& args) { return run(agent_bin() + " " + args); }
  // The variables `mlfx-agent gpu-env` prints, which also makes the directory.
  std::vector<std::string> arming_env() {
    auto r = agent("gpu-env --dir " + gpu_dir);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::vector<std::string> env;
    std::istringstream in(r.output);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) env.push_back(line);
    return env;
  }
  std::string capture_args(pid_t pid, const std::string& out) {
    return "capture --pid " + std::to_string(pid) + " --source gpu,process --gpu-dir " + gpu_dir +
           " --nvidia-proc " + nvidia + " --out " + out + " --device-key " + (dir / "dev.key") +
           " --recipient " + (dir / "lab.pub") + " -q";
  }
  // The failed capture left nothing: no bundle, no FIFO, the target running.
  void expect_nothing_left(const FakeTarget& t, const std::string& bundle) {
    EXPECT_FALSE(fs::exists(bundle));
    EXPECT_FALSE(fs::is_fifo(gpu_dir + "/core." + std::to_string(t.pid())))
        << "the FIFO was left behind";
    if (t.alive()) {
      const char st = proc_state(t.pid());
      EXPECT_TRUE(st != 't' && st != 'T') << "the target was left stopped";
    }
  }
  testing::TempDir dir;
  std::string gpu_dir = dir / "run/gpu";
  std::string nvidia = dir / "nvidia";
};

TEST_F(GpuCaptureCli, GpuEnvPrintsTheArmingVariablesAndMakesTheDirectory) {
  auto env = arming_env();
  ASSERT_EQ(env.size(), 5u);
  EXPECT_EQ(env[0], "CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1");
  EXPECT_EQ(env[1], "CUDA_COREDUMP_PIPE=" + gpu_dir + "/corepipe.%p");
  EXPECT_EQ(env[2], "CUDA_COREDUMP_FILE=" + gpu_dir + "/core.%p");
  EXPECT_TRUE(fs::is_directory(gpu_dir));
  EXPECT_EQ(agent("gpu-env --dir relative").exit_code, 1);
}

TEST_F(GpuCaptureCli, TheGpuDumpAndTheProcessGoIntoOneBundleGpuFirst) {
  FakeTarget t;
  const std::string truth = dir / "truth.nvcudmp";
  ASSERT_TRUE(t.start(dir.path(), arming_env(),
                      {"--global-bytes", std::to_string(24 << 20), "--truth", truth}));
  const std::string bundle = dir / "case.mlfx";
  auto cap = agent(capture_args(t.pid(), bundle));
  ASSERT_EQ(cap.exit_code, 0) << cap.output << t.log();
  EXPECT_NE(cap.output.find("captured the GPU core dump of pid " + std::to_string(t.pid()) +
                            " (pipe-trigger)"),
            std::string::npos)
      << cap.output;
  EXPECT_NE(cap.output.find("captured pid " + std::to_string(t.pid())), std::string::npos)
      << cap.output;
  EXPECT_TRUE(t.alive());
  EXPECT_NE(t.log().find("coredump: All done"), std::string::npos) << t.log();
  EXPECT_FALSE(fs::exists(gpu_dir + "/core." + std::to_string(t.pid())))
      << "the FIFO was left behind";

  auto ver = mlfx("bundle verify " + bundle);
  ASSERT_EQ(ver.exit_code, 5) << ver.output;  // intact, signer identity not checked here
  auto open = mlfx("bundle open " + bundle + " --key " + (dir / "lab.key") + " --out " +
                   (dir / "open") + " -q");
  ASSERT_EQ(open.exit_code, 0) << open.output;
  const std::string dump = testing::read_file(dir / "open/gpu-core");
  const std::string expected = testing::read_file(truth);
  ASSERT_GT(expected.size(), size_t{24} << 20);
  EXPECT_EQ(dump.size(), expected.size());
  EXPECT_TRUE(dump == expected) << "the sealed dump differs from what the target wrote";
  EXPECT_TRUE(fs::exists(dir / "open/core"));  // the process source, after the GPU

  auto c = json::parse(testing::read_file(dir / "open/gpu-context"), "gpu-context");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ((*c)["pid"], t.pid());
  EXPECT_EQ((*c)["method"], "pipe-trigger");
  EXPECT_EQ((*c)["generation_flags"], "skip_nonrelocated_elf_images");
  EXPECT_EQ((*c)["arming"]["CUDA_COREDUMP_PIPE"], gpu_dir + "/corepipe.%p");
  EXPECT_TRUE((*c)["target"]["survived"].get<bool>());
  EXPECT_TRUE((*c)["complete"].get<bool>());
  EXPECT_EQ((*c)["dump"]["bytes"], expected.size());
  EXPECT_EQ((*c)["dump"]["format"], "elf");
  EXPECT_EQ((*c)["dump"]["sha256"].get<std::string>().size(), 64u);
  EXPECT_NE((*c)["driver"]["version"].get<std::string>().find("580.65.06"), std::string::npos);
  EXPECT_NE((*c)["driver"]["gpus"][0]["information"].get<std::string>().find("H100"),
            std::string::npos);
  EXPECT_GT((*c)["timings"]["trigger_to_eof_ms"].get<double>(), 0.0);

  auto manifest = json::parse(testing::read_file(dir / "open/manifest.json"), "manifest");
  ASSERT_TRUE(manifest);
  std::vector<std::string> names;
  for (const auto& s : (*manifest)["streams"]) names.push_back(s["name"].get<std::string>());
  ASSERT_GE(names.size(), 4u);
  EXPECT_EQ(names[0], "gpu-core");
  EXPECT_EQ(names[1], "core");
}

// A target armed only for the CUPTI library's copy-out (gpu-env --cupti, without the driver's
// variables): the agent triggers the library's FIFO and seals what it writes, the same format.
TEST_F(GpuCaptureCli, ATargetArmedForTheCuptiCopyOutIsCopiedOut) {
  const std::string library = dir / "libmlfx_cupti.so";  // gpu-env checks only that it exists
  testing::write_file(library, "");
  auto r = agent("gpu-env --dir " + gpu_dir + " --cupti " + library);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("CUDA_INJECTION64_PATH=" + library + "\n"), std::string::npos) << r.output;
  std::vector<std::string> env;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("MLFX_CUPTI_", 0) == 0) env.push_back(line);  // the library's alone
  ASSERT_EQ(env.size(), 2u) << r.output;
  FakeTarget t;
  const std::string truth = dir / "truth.nvcudmp";
  ASSERT_TRUE(t.start(dir.path(), env, {"--global-bytes", std::to_string(4 << 20), "--truth", truth}));
  const std::string bundle = dir / "case.mlfx";
  auto cap = agent(capture_args(t.pid(), bundle));
  ASSERT_EQ(cap.exit_code, 0) << cap.output << t.log();
  EXPECT_NE(cap.output.find("(cupti-copy-out)"), std::string::npos) << cap.output;
  auto open = mlfx("bundle open " + bundle + " --key " + (dir / "lab.key") + " --out " + (dir / "open") + " -q");
  ASSERT_EQ(open.exit_code, 0) << open.output;
  EXPECT_TRUE(testing::read_file(dir / "open/gpu-core") == testing::read_file(truth));
  auto c = json::parse(testing::read_file(dir / "open/gpu-context"), "gpu-context");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ((*c)["method"], "cupti-copy-out");
  EXPECT_EQ((*c)["arming"]["MLFX_CUPTI_OUTPUT"], gpu_dir + "/cupti-core.%p");
  EXPECT_TRUE(t.alive());
  EXPECT_FALSE(fs::exists(gpu_dir + "/cupti-core." + std::to_string(t.pid()))) << "the FIFO was left behind";
}

TEST_F(GpuCaptureCli, ATargetNotArmedFailsSayingHowToArm) {
  if (access("/usr/local/cuda/bin/cuda-gdb", X_OK) == 0) GTEST_SKIP() << "cuda-gdb would stand in";
  fs::create_directories(dir / "run");
  (void)arming_env();  // the directory exists; the target does not use it
  FakeTarget t;
  ASSERT_TRUE(t.start(dir.path(), {}, {}));
  const std::string bundle = dir / "x.mlfx";
  auto cap = run("PATH=/usr/bin:/bin " + agent_bin() + " " + capture_args(t.pid(), bundle));
  EXPECT_NE(cap.exit_code, 0);
  EXPECT_NE(cap.output.find("is not armed for a GPU core dump"), std::string::npos) << cap.output;
  EXPECT_NE(cap.output.find("mlfx-agent gpu-env"), std::string::npos) << cap.output;
  expect_nothing_left(t, bundle);
}

TEST_F(GpuCaptureCli, ADriverThatNeverWritesTimesOutAndLeavesNothing) {
  FakeTarget t;
  ASSERT_TRUE(t.start(dir.path(), arming_env(), {"--mode", "never"}));
  const std::string bundle = dir / "x.mlfx";
  const auto t0 = std::chrono::steady_clock::now();
  auto cap = agent(capture_args(t.pid(), bundle) + " --gpu-timeout 2");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
  EXPECT_NE(cap.exit_code, 0);
  EXPECT_NE(cap.output.find("no GPU core dump began within 2 s"), std::string::npos) << cap.output;
  EXPECT_TRUE(t.alive());
  expect_nothing_left(t, bundle);
}

// A driver that begins after the agent gave up finds no FIFO and no file to write: its dump
// fails (the agent left a directory in the way) instead of filling /run, and the target lives.
TEST_F(GpuCaptureCli, ADumpThatBeginsAfterTheTimeoutLandsNowhere) {
  FakeTarget t;
  ASSERT_TRUE(t.start(dir.path(), arming_env(), {"--mode", "late"}));
  const std::string bundle = dir / "x.mlfx";
  auto cap = agent(capture_args(t.pid(), bundle) + " --gpu-timeout 1");
  EXPECT_NE(cap.exit_code, 0);
  EXPECT_NE(cap.output.find("no GPU core dump began within 1 s"), std::string::npos) << cap.output;
  const std::string core = gpu_dir + "/core." + std::to_string(t.pid());
  for (int i = 0; i < 500 && t.log().find("open " + core) == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(t.log().find("Is a directory"), std::string::npos) << t.log();
  EXPECT_TRUE(fs::is_directory(core));
  EXPECT_TRUE(t.alive());
  expect_nothing_left(t, bundle);
  // The next capture of that target clears the way, and waits long enough this time.
  auto again = agent(capture_args(t.pid(), bundle) + " --gpu-timeout 20");
  EXPECT_EQ(again.exit_code, 0) << again.output << t.log();
  EXPECT_FALSE(fs::exists(core));
}

// A capture that gives up while the driver is still writing must not break the pipe under it:
// a driver that leaves SIGPIPE at its default would kill the target. The agent drains the rest.
TEST_F(GpuCaptureCli, ADumpGivenUpMidwayIsDrainedSoTheTargetLives) {
  FakeTarget t;
  ASSERT_TRUE(t.start(dir.path(), arming_env(), {"--mode", "stall", "--global-bytes", std::to_string(8 << 20)}));
  const std::string bundle = dir / "x.mlfx";
  auto cap = agent(capture_args(t.pid(), bundle) + " --gpu-timeout 1");
  EXPECT_NE(cap.exit_code, 0);
  EXPECT_NE(cap.output.find("stalled"), std::string::npos) << cap.output;
  for (int i = 0; i < 1000 && t.log().find("All done") == std::string::npos && t.alive(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(t.alive()) << t.log();
  EXPECT_NE(t.log().find("All done"), std::string::npos) << t.log();
  expect_nothing_left(t, bundle);
}

TEST_F(GpuCaptureCli, ATargetThatDiesMidDumpFailsTheCapture) {
  FakeTarget t;
  ASSERT_TRUE(t.start(dir.path(), arming_env(),
                      {"--mode", "half", "--global-bytes", std::to_string(8 << 20)}));
  const std::string bundle = dir / "x.mlfx";
  auto cap = agent(capture_args(t.pid(), bundle));
  EXPECT_NE(cap.exit_code, 0);
  EXPECT_TRUE(cap.output.find("cut off") != std::string::npos ||
              cap.output.find("exited during") != std::string::npos)
      << cap.output;
  expect_nothing_left(t, bundle);
}

TEST_F(GpuCaptureCli, AHostileEnvironmentIsRefusedBeforeAnythingIsTouched) {
  auto env = arming_env();
  for (const std::string& file :
       {std::string("CUDA_COREDUMP_FILE=| sh -c 'touch ") + (dir / "pwned") + "'",
        "CUDA_COREDUMP_FILE=" + gpu_dir + "/../core.%p",
        std::string("CUDA_COREDUMP_FILE=/tmp/core.%p")}) {
    std::vector<std::string> e = env;
    e[2] = file;
    FakeTarget t;
    ASSERT_TRUE(t.start(dir.path(), e, {"--mode", "never"}));
    const std::string bundle = dir / "x.mlfx";
    auto cap = agent(capture_args(t.pid(), bundle));
    EXPECT_NE(cap.exit_code, 0) << file;
    EXPECT_NE(cap.output.find("refused"), std::string::npos) << cap.output;
    expect_nothing_left(t, bundle);
  }
  EXPECT_FALSE(fs::exists(dir / "pwned"));
}

}  // namespace
}  // namespace mlfx
