// The heart of the product, end to end with real parts: a Debian python3 + torch process
// builds models and writes its ground truth outside the capture; mlfx-agent captures it into a
// sealed bundle; mlfx recovers every model; check_recovery.py compares them bit for bit; the
// victim must survive with unchanged outputs. Also the bad inputs recovery must survive.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "mlfx/base/json.h"
#include "recovery/victim_process.h"
#include "test_util.h"

namespace mlfx {
namespace {

using namespace testing;  // run, Victim, kPython, kVictims...

class Recovery : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    kit_ = new CaptureKit;
    ASSERT_TRUE(kit_->ok());
  }
  static void TearDownTestSuite() { delete kit_; }
  void SetUp() override {
    if (!torch_available()) GTEST_SKIP() << kPython << " cannot import torch (install python3-torch)";
  }

  testing::CommandResult capture(pid_t pid, const std::string& bundle) { return kit_->capture(pid, bundle); }
  testing::CommandResult recover(const std::string& input, const std::string& out) { return kit_->recover(input, out); }
  // Every member recover wrote is specified in docs/outputs.md (report.json, each
  // architecture.json, loose.json): one run of its checker.
  void expect_outputs_documented(const std::string& out) {
    auto spec = run(kPython + " " + std::string(MLFX_SOURCE_DIR) + "/tests/docs/outputs_spec_test.py " + out);
    EXPECT_EQ(spec.exit_code, 0) << spec.output;
  }
  // Opens the bundle's core stream as a plain file, for tests that damage it.
  std::string plain_core(const std::string& bundle) {
    std::string core = dir / "core.elf";
    auto r = kit_->open_core(bundle, dir / "opened", core);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return core;
  }

  // Runs one scenario end to end and checks everything the issue asks.
  void scenario(const std::string& name) {
    const std::string gt = dir / "gt", bundle = dir / "capture.mlfx", out = dir / "recovered";
    Victim v(kPython + " " + kVictims + "/torch_victim.py " + name + " " + gt, gt);
    ASSERT_TRUE(wait_for(gt + "/ready", 180)) << "victim did not start: " << v.stderr_text();
    std::string beat_before = testing::read_file(gt + "/heartbeat");
    auto c = capture(v.pid(), bundle);
    ASSERT_EQ(c.exit_code, 0) << c.output;
    // The victim survives, runs on (not left stopped), and computes the same outputs.
    EXPECT_TRUE(v.alive());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_NE(v.state(), 't');
    EXPECT_NE(v.state(), 'T');
    testing::write_file(gt + "/check", "1");
    ASSERT_TRUE(wait_for(gt + "/checked", 60)) << v.stderr_text();
    EXPECT_NE(testing::read_file(gt + "/heartbeat"), beat_before) << "victim stopped running";
    auto same = run(kPython + " -c \"import torch,sys; a=torch.load(sys.argv[1]); b=torch.load(sys.argv[2]); "
                              "sys.exit(0 if a.keys()==b.keys() and all(torch.equal(a[k],b[k]) for k in a) else 1)\" " +
                    gt + "/outputs_before.pt " + gt + "/outputs_after.pt");
    EXPECT_EQ(same.exit_code, 0) << "outputs changed after the capture: " << same.output;
    testing::write_file(gt + "/stop", "1");

    auto r = recover(bundle, out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto check = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + out);
    EXPECT_EQ(check.exit_code, 0) << check.output;
    expect_outputs_documented(out);
    auto report = json::parse(testing::read_file(out + "/report.json"), "report");
    ASSERT_TRUE(report);
    EXPECT_EQ((*report)["python"]["version"].get<std::string>().substr(0, 5), "3.11.");
    EXPECT_EQ((*report)["process"]["machine"], "x86_64");
    EXPECT_TRUE((*report)["torch"]["loaded"].get<bool>());
    for (const auto& m : (*report)["models"]) EXPECT_TRUE(m["complete"].get<bool>()) << m.dump();
  }

  static CaptureKit* kit_;
  testing::TempDir dir;
};
CaptureKit* Recovery::kit_ = nullptr;

TEST_F(Recovery, SmallCnn) { scenario("cnn"); }
TEST_F(Recovery, Mlp) { scenario("mlp"); }
TEST_F(Recovery, ResNetWithBatchNorm) { scenario("resnet"); }
TEST_F(Recovery, DepthwiseSeparable) { scenario("depthwise"); }
TEST_F(Recovery, EmbeddingLstm) { scenario("lstm"); }
TEST_F(Recovery, OnlineTrainingWithOptimizerState) { scenario("training"); }
TEST_F(Recovery, TwoIndependentModels) { scenario("two"); }
TEST_F(Recovery, TiedWeights) { scenario("tied"); }
TEST_F(Recovery, DtypesNonContiguousAndBuffers) { scenario("dtypes"); }
TEST_F(Recovery, SixtyMillionParameters) { scenario("big"); }

// mlfx recover --pid: the live process is frozen only while its memory is read into memory,
// released, and recovered bit-exactly; it runs on with unchanged outputs.
TEST_F(Recovery, LiveProcessByPid) {
  const std::string gt = dir / "gt", out = dir / "recovered";
  Victim v(kPython + " " + kVictims + "/torch_victim.py resnet " + gt, gt);
  ASSERT_TRUE(wait_for(gt + "/ready", 180)) << "victim did not start: " << v.stderr_text();
  auto r = run(testing::mlfx_bin() + " recover --pid " + std::to_string(v.pid()) + " --out " + out + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(v.alive());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_NE(v.state(), 't');
  testing::write_file(gt + "/check", "1");
  ASSERT_TRUE(wait_for(gt + "/checked", 60)) << v.stderr_text();
  testing::write_file(gt + "/stop", "1");
  auto check = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + out);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  expect_outputs_documented(out);
  auto report = json::parse(testing::read_file(out + "/report.json"), "report");
  ASSERT_TRUE(report);
  EXPECT_EQ((*report)["input"]["kind"], "live process");
  EXPECT_EQ((*report)["input"]["pid"], v.pid());
  EXPECT_GT((*report)["input"]["timings"]["frozen_ms"].get<double>(), 0.0);
  EXPECT_EQ((*report)["process"]["pid"], v.pid());

  // Nothing to capture: a clear message, exit 1, no output directory.
  auto gone = run(testing::mlfx_bin() + " recover --pid 999999999 --out " + (dir / "gone") + " -q");
  EXPECT_EQ(gone.exit_code, 1) << gone.output;
  EXPECT_NE(gone.output.find("no such process"), std::string::npos) << gone.output;
  EXPECT_FALSE(testing::fs::exists(dir / "gone"));
}

// gcore, like kernel cores with the default coredump_filter, leaves out read-only file-backed
// mappings (.text, .rodata: PyType_Type's name lives there). Without --sysroot recovery says
// so and what to do; with --sysroot / it reads them from the files, bit-exactly; a sysroot
// holding another build of the interpreter is refused by build-id, not used.
TEST_F(Recovery, GcoreCoreWithSysroot) {
  if (run("command -v gcore").exit_code != 0) GTEST_SKIP() << "gcore (gdb) is not installed: apt-get install gdb";
  const std::string gt = dir / "gt", out = dir / "recovered";
  Victim v(kPython + " " + kVictims + "/torch_victim.py cnn " + gt, gt);
  ASSERT_TRUE(wait_for(gt + "/ready", 180)) << "victim did not start: " << v.stderr_text();
  auto g = run("gcore -o " + (dir / "core") + " " + std::to_string(v.pid()));
  const std::string core = dir / ("core." + std::to_string(v.pid()));
  ASSERT_EQ(g.exit_code, 0) << g.output;
  ASSERT_TRUE(testing::fs::exists(core)) << g.output;
  EXPECT_TRUE(v.alive());

  auto bare = run(testing::mlfx_bin() + " recover " + core + " --out " + (dir / "bare") + " -q");
  EXPECT_EQ(bare.exit_code, 1) << bare.output;
  EXPECT_NE(bare.output.find("gcore and kernel cores leave out read-only file data"), std::string::npos) << bare.output;
  EXPECT_NE(bare.output.find("--sysroot /"), std::string::npos) << bare.output;

  auto r = run(testing::mlfx_bin() + " recover " + core + " --sysroot / --out " + out + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto check = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + out);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  expect_outputs_documented(out);
  auto report = json::parse(testing::read_file(out + "/report.json"), "report");
  ASSERT_TRUE(report);
  for (const auto& m : (*report)["models"]) EXPECT_TRUE(m["complete"].get<bool>()) << m.dump();
  std::string warnings;
  for (const auto& w : (*report)["diagnostics"]["warnings"]) warnings += w.get<std::string>() + "\n";
  EXPECT_NE(warnings.find("sysroot: read /usr/bin/python3.11 from /usr/bin/python3.11 (build-id "), std::string::npos)
      << warnings;
  const auto& files = (*report)["input"]["sysroot"]["files"];
  ASSERT_FALSE(files.empty());
  size_t read = 0;
  for (const auto& f : files) {
    if (!f["read"].get<bool>()) continue;
    ++read;
    EXPECT_TRUE(f["attached"].get<bool>()) << f.dump();
    EXPECT_TRUE(f["verified"].get<bool>()) << f.dump();  // every ELF gcore leaves its first page
  }
  EXPECT_GT(read, 0u);

  // Another build at the interpreter's path: refused by build-id, and the error says so.
  const std::string other = dir / "other-root";
  testing::fs::create_directories(other + "/usr/bin");
  testing::fs::copy_file("/bin/ls", other + "/usr/bin/python3.11");
  auto wrong =
      run(testing::mlfx_bin() + " recover " + core + " --sysroot " + other + " --out " + (dir / "wrong") + " -q");
  EXPECT_EQ(wrong.exit_code, 1) << wrong.output;
  EXPECT_NE(wrong.output.find("/usr/bin/python3.11 refused: build-id "), std::string::npos) << wrong.output;
  testing::write_file(gt + "/stop", "1");
}

// A kernel core (default coredump_filter) leaves out the same read-only file data, except the
// first page of each ELF object, and declares every mapping with its permissions.
TEST_F(Recovery, KernelCoreWithSysroot) {
  const std::string pattern = testing::read_file("/proc/sys/kernel/core_pattern");
  if (pattern.empty() || pattern[0] == '|' || pattern.find('/') != std::string::npos)
    GTEST_SKIP() << "kernel.core_pattern is '" << pattern.substr(0, pattern.find('\n'))
                 << "': cores do not land in the victim's directory";
  const std::string gt = dir / "gt", cores = dir / "cores", out = dir / "recovered";
  testing::fs::create_directories(cores);
  // Victim execs its command: a shell that execs python keeps the pid.
  Victim v("sh -c 'cd " + cores + " && ulimit -c unlimited && exec " + kPython + " " + kVictims +
               "/torch_victim.py cnn " + gt + "'",
           gt);
  ASSERT_TRUE(wait_for(gt + "/ready", 180)) << "victim did not start: " << v.stderr_text();
  ASSERT_EQ(kill(v.pid(), SIGABRT), 0);
  const int status = v.wait_exit();
  std::vector<std::string> names = testing::list_dir(cores);
  if (!WIFSIGNALED(status) || !WCOREDUMP(status) || names.size() != 1)
    GTEST_SKIP() << "the kernel wrote no core here (RLIMIT_CORE or a container policy?)";
  const std::string core = cores + "/" + names[0];

  auto bare = run(testing::mlfx_bin() + " recover " + core + " --out " + (dir / "bare") + " -q");
  EXPECT_EQ(bare.exit_code, 1) << bare.output;
  EXPECT_NE(bare.output.find("--sysroot /"), std::string::npos) << bare.output;
  auto r = run(testing::mlfx_bin() + " recover " + core + " --sysroot / --out " + out + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto check = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + out);
  EXPECT_EQ(check.exit_code, 0) << check.output;
}

// ---- bad input ----

class BadInput : public Recovery {};

TEST_F(BadInput, RandomBytesAndEmptyFiles) {
  testing::write_file(dir / "random.bin", testing::random_string(1 << 20, 7));
  auto r = recover(dir / "random.bin", dir / "out");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("neither an ELF core dump nor an mlfx bundle"), std::string::npos) << r.output;
  testing::write_file(dir / "empty.bin", "");
  r = recover(dir / "empty.bin", dir / "out2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("empty"), std::string::npos) << r.output;
  // An ELF file that is not a core.
  r = recover("/usr/bin/python3.11", dir / "out3");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("not a core"), std::string::npos) << r.output;
}

TEST_F(BadInput, NonPythonProcess) {
  Victim v("sleep 600", dir / "v");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(capture(v.pid(), dir / "sleep.mlfx").exit_code, 0);
  auto r = recover(dir / "sleep.mlfx", dir / "out");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("no CPython interpreter"), std::string::npos) << r.output;
}

TEST_F(BadInput, PythonWithoutTorch) {
  Victim v(kPython + " -c 'import time\nwhile True: time.sleep(1)'", dir / "v");
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  ASSERT_EQ(capture(v.pid(), dir / "py.mlfx").exit_code, 0);
  auto r = recover(dir / "py.mlfx", dir / "out");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("torch is not imported"), std::string::npos) << r.output;
  EXPECT_TRUE(testing::fs::exists(dir / "out/report.json"));
}

// Damaged cores of a real torch process: truncated, and with corrupted GC links.
TEST_F(BadInput, TruncatedAndCorruptedCores) {
  const std::string gt = dir / "gt";
  Victim v(kPython + " " + kVictims + "/torch_victim.py mlp " + gt, gt);
  ASSERT_TRUE(wait_for(gt + "/ready", 180)) << v.stderr_text();
  ASSERT_EQ(capture(v.pid(), dir / "c.mlfx").exit_code, 0);
  std::string core = plain_core(dir / "c.mlfx");
  auto good = recover(core, dir / "good");
  ASSERT_EQ(good.exit_code, 0) << good.output;
  auto report = json::parse(testing::read_file(dir / "good/report.json"), "report");
  ASSERT_TRUE(report);
  uint64_t gc_state = std::stoull((*report)["python"]["gc_state"].get<std::string>(), nullptr, 16);

  // Truncations at many points: a clear error or a partial result, never a crash.
  const uint64_t size = testing::fs::file_size(core);
  for (uint64_t cut : {uint64_t(10), uint64_t(63), uint64_t(4096), size / 100, size / 3, size / 2, size - 5000}) {
    std::string t = dir / ("trunc" + std::to_string(cut));
    testing::fs::copy_file(core, t);
    testing::fs::resize_file(t, cut);
    auto r = recover(t, t + ".out");
    EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1 || r.exit_code == 3) << cut << ": " << r.output;
    EXPECT_LT(r.exit_code, 128) << "crashed at cut " << cut << ": " << r.output;
    if (r.exit_code != 1) {
      auto rep = json::parse(testing::read_file(t + ".out/report.json"), "report");
      ASSERT_TRUE(rep) << cut;
      EXPECT_FALSE((*rep)["diagnostics"]["warnings"].empty()) << "truncation not reported at " << cut;
    }
    testing::fs::remove(t);
  }

  // Corrupt GC links: a self-loop and a pointer into nowhere, in every generation's head.
  auto patch = [&](const std::string& path, uint64_t addr, uint64_t value) {
    auto file = layers::FileLayer::open(path);
    ASSERT_TRUE(file);
    auto layer = layers::ElfCoreLayer::open(std::shared_ptr<const layers::Layer>(std::move(*file)));
    ASSERT_TRUE(layer);
    for (const auto& l : (*layer)->info().loads)
      if (addr >= l.vaddr && addr + 8 <= l.vaddr + l.filesz) {
        std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(l.offset + (addr - l.vaddr)));
        f.write(reinterpret_cast<const char*>(&value), 8);
        return;
      }
    FAIL() << "address not in the core";
  };
  for (int gen = 0; gen < 3; ++gen) {
    uint64_t head = gc_state + 24 + 24 * gen;
    // Into nowhere, and into another generation's list: a cycle that never returns to `head`.
    for (uint64_t target : {uint64_t(0x10), gc_state + 24 + 24 * ((gen + 1) % 3)}) {
      std::string bad = dir / "bad.core";
      testing::fs::remove(bad);
      testing::fs::copy_file(core, bad);
      patch(bad, head, target);
      auto r = recover(bad, dir / "bad.out");
      EXPECT_LT(r.exit_code, 128) << r.output;
      EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 3) << r.output;
      auto rep = json::parse(testing::read_file(dir / "bad.out/report.json"), "report");
      ASSERT_TRUE(rep);
      EXPECT_FALSE((*rep)["diagnostics"]["warnings"].empty()) << "corruption not reported (gen " << gen << ")";
      testing::fs::remove_all(dir / "bad.out");
    }
  }
}

}  // namespace
}  // namespace mlfx
