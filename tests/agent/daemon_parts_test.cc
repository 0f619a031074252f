// The daemon's small parts, each alone: the capture budget, target selection, cgroup paths and
// the PSI figures the pressure watch samples.
#include <gtest/gtest.h>

#include "daemon/capture_budget.h"
#include "daemon/pressure.h"
#include "daemon/targets.h"

namespace mlfx::agent::daemon {
namespace {

using namespace std::chrono_literals;
using Clock = CaptureBudget::Clock;

TEST(CaptureBudget, AStormYieldsMaxCapturesPerWindowAndCountsTheRest) {
  CaptureBudget b;
  const BudgetLimits limits{3, 3600s, 0s};
  const auto t0 = Clock::time_point{} + 1000h;
  int admitted = 0;
  for (int i = 0; i < 2000; ++i) admitted += b.admit("crash/model", limits, t0 + std::chrono::milliseconds(i / 2)).allowed;
  EXPECT_EQ(admitted, 3);
  EXPECT_EQ(b.suppressed("crash/model"), 1997u);
  auto d = b.admit("crash/model", limits, t0 + 10s);
  EXPECT_FALSE(d.allowed);
  EXPECT_NE(d.reason.find("3 captures within 60 min (max_captures 3)"), std::string::npos) << d.reason;
  EXPECT_TRUE(b.admit("crash/model", limits, t0 + 3601s).allowed) << "the window slides";
  EXPECT_TRUE(b.admit("crash/other", limits, t0).allowed) << "budgets are per rule and target";
}

TEST(CaptureBudget, CooldownSaysHowLongIsLeft) {
  CaptureBudget b;
  const BudgetLimits limits{10, 3600s, 60s};
  const auto t0 = Clock::time_point{} + 1000h;
  EXPECT_TRUE(b.admit("k", limits, t0).allowed);
  auto d = b.admit("k", limits, t0 + 19s);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, "cooldown: 41 s left of 60 s");
  EXPECT_TRUE(b.admit("k", limits, t0 + 60s).allowed);
  b.reset_counters();
  EXPECT_EQ(b.suppressed("k"), 0u);
  EXPECT_FALSE(b.admit("k", limits, t0 + 61s).allowed) << "a reset keeps the history";
}

TEST(Targets, CgroupPathPrefersV2AndFallsBackToSystemdOnHybrids) {
  EXPECT_EQ(cgroup_path("0::/system.slice/perception.service\n"), "/system.slice/perception.service");
  EXPECT_EQ(cgroup_path("12:memory:/x\n1:name=systemd:/system.slice/a.service\n0::/\n"), "/system.slice/a.service");
  EXPECT_EQ(cgroup_path("1:name=systemd:/user.slice\n0::/mlfx\n"), "/mlfx");
  EXPECT_EQ(cgroup_path(""), "");
}

TEST(Targets, EverySelectorGivenMustMatch) {
  TargetSpec t;
  t.name = "perception";
  t.comm = {"python3"};
  t.cmdline_re = std::regex("perception_server\\.py");
  t.unit = {"perception.service"};
  ProcessFacts f{4242, "/usr/bin/python3.11", "python3", "/usr/bin/python3 perception_server.py --cam 2",
                 "/system.slice/perception.service"};
  EXPECT_TRUE(matches(t, f));
  ProcessFacts other_unit = f;
  other_unit.cgroup = "/system.slice/perception.service.bak";
  EXPECT_FALSE(matches(t, other_unit)) << "a unit is a whole path component";
  ProcessFacts other_cmd = f;
  other_cmd.cmdline = "/usr/bin/python3 trainer.py";
  EXPECT_FALSE(matches(t, other_cmd));
  TargetSpec by_cgroup;
  by_cgroup.cgroup = {"/system.slice"};
  EXPECT_TRUE(matches(by_cgroup, f));
  by_cgroup.cgroup = {"/system.sl"};
  EXPECT_FALSE(matches(by_cgroup, f)) << "a cgroup prefix ends at a '/'";
  TargetSpec by_pid;
  by_pid.pid = {4242};
  EXPECT_TRUE(matches(by_pid, f));
  by_pid.pid = {1};
  EXPECT_FALSE(matches(by_pid, f));
}

TEST(Pressure, SomeTotalIsReadFromTheSomeLineOnly) {
  EXPECT_EQ(some_total("some avg10=0.00 avg60=0.00 avg300=0.00 total=763544;full avg10=0.00 total=9"), 763544u);
  EXPECT_EQ(some_total("some avg10=0.00 avg60=0.00 avg300=0.00 total=12\nfull avg10=0.00 total=9\n"), 12u);
  EXPECT_FALSE(some_total("full avg10=0.00 total=9"));
  EXPECT_FALSE(some_total("some avg10=0.00;full total=9")) << "the total must be on the some line";
  EXPECT_FALSE(some_total("some total=x"));
}

}  // namespace
}  // namespace mlfx::agent::daemon
