// From an armed process to its recovery, agent to analyzer: a real python3 + torch victim armed
// with `mlfx-agent gpu-env`, whose driver is the stand-in of tests/victims/cuda_driver_stub.py
// (no GPU in CI: on the pipe's byte a thread of the victim streams a GPU core dump built per
// NVIDIA's public format into the agent's FIFO, as the driver's dump thread does). `mlfx-agent
// capture --source gpu,process` seals the dump (gpu-core, gpu-context) and the process; `mlfx
// recover` must open the dump from the bundle, say where it came from and how it was made, and
// recover the victim's (CPU) models bit-exactly. tests/gpu/ runs the same with a real GPU.
#include <gtest/gtest.h>

#include <sstream>

#include "mlfx/base/json.h"
#include "mlfx/crypto/hash.h"
#include "synthetic_cuda_core.h"
#include "victim_process.h"

namespace mlfx::testing {
namespace {

TEST(GpuCaptureRecover, AnArmedVictimsGpuDumpTravelsInItsBundleToTheRecovery) {
  if (!torch_available()) GTEST_SKIP() << "python3-torch is not installed (packaging/setup-deps.sh installs it)";
  CaptureKit kit;
  ASSERT_TRUE(kit.ok());
  TempDir dir;
  const std::string dump = synthetic::cuda_dump({}), gt = dir / "gt", gpu_dir = dir / "gpu";
  write_file(dir / "dump", dump);
  auto env = run(agent_bin() + " gpu-env --dir " + gpu_dir);
  ASSERT_EQ(env.exit_code, 0) << env.output;
  std::string arming;
  std::istringstream lines(env.output);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("CUDA_", 0) == 0) arming += "'" + line + "' ";
  ASSERT_NE(arming.find("CUDA_COREDUMP_FILE="), std::string::npos) << env.output;

  Victim victim("env " + arming + "MLFX_FAKE_CUDA_DUMP=" + (dir / "dump") + " " + kPython + " " + kVictims +
                    "/torch_victim.py cnn " + gt,
                gt);
  ASSERT_TRUE(wait_for(gt + "/ready", 120)) << victim.stderr_text();
  auto cap = run(agent_bin() + " capture --pid " + std::to_string(victim.pid()) + " --source gpu,process --gpu-dir " +
                 gpu_dir + " --out " + (dir / "b.mlfx") + " --device-key " + kit.device_key() + " --recipient " +
                 kit.lab_pub() + " --case TEST -q");
  ASSERT_EQ(cap.exit_code, 0) << cap.output << victim.stderr_text();
  EXPECT_TRUE(victim.alive());

  auto rec = kit.recover(dir / "b.mlfx", dir / "rec");
  ASSERT_EQ(rec.exit_code, 0) << rec.output;
  auto check = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + (dir / "rec"));
  EXPECT_EQ(check.exit_code, 0) << check.output;
  const json::Json gpu = json::Json::parse(read_file(dir / "rec/report.json"))["gpu"];
  EXPECT_EQ(gpu["dump"]["source"], "bundle stream gpu-core");
  EXPECT_EQ(gpu["dump"]["capture"], "pipe-trigger");
  EXPECT_EQ(gpu["dump"]["bytes"], dump.size());
  EXPECT_EQ(gpu["dump"]["sha256"], crypto::sha256_hex(as_bytes(dump)));
  EXPECT_EQ(gpu["dump"]["devices"][0]["name"], "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(gpu["tensors"]["cuda"], 0);  // the victim's models are on the CPU here
}

}  // namespace
}  // namespace mlfx::testing
