// Issue 11, item 4: anti-forensics by an ownership cycle. A real python3 + torch victim serves
// nn.Sequential m after `m[0]._modules['owner'] = m` (forward still works). Before the fix
// `mlfx recover` found no root and exited 3 ("no model found"). Now the model is recovered
// bit for bit against the ground truth the victim wrote before making the cycle, and the cycle
// is a finding in report.json and on the terminal.
//
// What torch 1.13 itself does, recorded by the victim: state_dict() recurses without end
// (RecursionError; it has no memo), while named_parameters() memoises modules and still
// lists the keys of the state_dict() from before the cycle. The recovered state_dict is that
// one: a module met again on its own path is not followed.
#include <gtest/gtest.h>

#include "mlfx/base/json.h"
#include "recovery/victim_process.h"
#include "test_util.h"

namespace mlfx {
namespace {

using namespace testing;

TEST(ModuleCycle, CycleDoesNotHideTheModelAndIsReported) {
  if (!torch_available()) GTEST_SKIP() << kPython << " cannot import torch (install python3-torch)";
  TempDir dir;
  const std::string gt = dir / "gt", out = dir / "out";
  Victim v(kPython + " " + kVictims + "/torch_victim.py cycle " + gt, gt);
  ASSERT_TRUE(wait_for(gt + "/ready", 180)) << "victim did not start: " << v.stderr_text();

  auto torch_says = json::parse(read_file(gt + "/cycle_check.json"), "cycle_check.json");
  ASSERT_TRUE(torch_says);
  EXPECT_TRUE((*torch_says)["state_dict_raises_recursion_error"].get<bool>());
  EXPECT_EQ((*torch_says)["named_parameters"], (*torch_says)["state_dict_keys_before"]);

  auto r = run(mlfx_bin() + " recover --pid " + std::to_string(v.pid()) + " --out " + out + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("finding (suspicious): module ownership cycle of 2 module(s)"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("._modules['owner'] -> "), std::string::npos) << r.output;
  write_file(gt + "/stop", "1");
  auto check = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + out);
  EXPECT_EQ(check.exit_code, 0) << check.output;

  auto report = json::parse(read_file(out + "/report.json"), "report.json");
  ASSERT_TRUE(report);
  ASSERT_EQ((*report)["models"].size(), 1u) << (*report)["models"].dump();
  const auto& model = (*report)["models"][0];
  EXPECT_EQ(model["class"], "torch.nn.modules.container.Sequential");
  EXPECT_TRUE(model["complete"].get<bool>()) << model.dump();
  ASSERT_EQ((*report)["findings"].size(), 1u) << (*report)["findings"].dump();
  const auto& f = (*report)["findings"][0];
  EXPECT_EQ(f["kind"], "module_cycle");
  EXPECT_EQ(f["severity"], "suspicious");
  EXPECT_EQ(f["module_count"], 2);
  EXPECT_EQ(f["root"], model["address"]) << "the root is the module the process holds, not m[0]";
  EXPECT_EQ(f["model"], 0);

  // architecture.json marks the slot that points back instead of describing m again.
  auto arch = json::parse(read_file(out + "/" + model["directory"].get<std::string>() + "/architecture.json"), "arch");
  ASSERT_TRUE(arch);
  const auto& first = (*arch)["children"][0];
  ASSERT_EQ(first["path"], "0");
  bool marked = false;
  for (const auto& c : first["children"])
    if (c["path"] == "0.owner") marked = c.value("cycle", "?") == "" && c["address"] == model["address"];
  EXPECT_TRUE(marked) << first.dump();
}

}  // namespace
}  // namespace mlfx
