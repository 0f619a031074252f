// The armed daemon's configuration (agent/daemon/config.h): the commented example under
// packaging/ parses as written, defaults fill what is left out, and every malformed file is
// refused with "FILE:LINE:COLUMN: reason" pointing at the offending line.
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "daemon/config.h"

namespace mlfx::agent::daemon {
namespace {

using std::chrono::microseconds;
using std::chrono::seconds;

constexpr const char* kPath = "/etc/mlfx/agent.toml";
constexpr uint64_t kMiB = 1024 * 1024, kGiB = 1024 * kMiB;

// A valid file in three pieces: a case appends its lines to the table it wants to spoil.
const std::string kAgent = R"([agent]
device_key = "/etc/mlfx/device.key"
recipients = ["/etc/mlfx/lab.pub"]
)";
const std::string kTarget = R"([[target]]
name = "perception"
comm = "python3"
)";
const std::string kRule = R"([[rule]]
name = "crash"
on = ["fatal-signal"]
)";
const std::string kValid = kAgent + kTarget + kRule;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// 1-based number of the first line holding `needle` (0 when none).
int line_of(const std::string& text, std::string_view needle) {
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n)
    if (line.find(needle) != std::string::npos) return n;
  return 0;
}

DaemonConfig parsed(const std::string& text) {
  auto config = parse_config(text, kPath);
  if (!config) {
    ADD_FAILURE() << "refused: " << config.error().to_string() << "\n" << text;
    return {};
  }
  return std::move(*config);
}

// The refusal's message, checked to be kInvalidArgument at `line` and to name every word.
void expect_refused(const std::string& text, int line, const std::vector<std::string>& words) {
  SCOPED_TRACE(text);
  ASSERT_GT(line, 0) << "the case marks no line";
  auto config = parse_config(text, kPath);
  ASSERT_FALSE(config) << "accepted";
  EXPECT_EQ(config.error().code(), Errc::kInvalidArgument);
  const std::string& message = config.error().message();
  EXPECT_TRUE(message.starts_with(std::string(kPath) + ":" + std::to_string(line) + ":")) << message;
  for (const std::string& word : words) EXPECT_NE(message.find(word), std::string::npos) << "no '" << word << "' in: " << message;
}

// The same, at the line marked "# HERE" in the text.
void expect_refused_here(const std::string& text, const std::vector<std::string>& words) {
  expect_refused(text, line_of(text, "# HERE"), words);
}

TEST(DaemonConfig, TheExampleParsesAsWritten) {
  const std::string path = std::string(MLFX_SOURCE_DIR) + "/packaging/mlfx-agent.toml";
  const std::string text = read_text(path);
  ASSERT_FALSE(text.empty()) << path;
  auto loaded = load_config(path);
  ASSERT_TRUE(loaded) << loaded.error().to_string();
  const DaemonConfig& c = *loaded;
  EXPECT_EQ(c.path, path);

  EXPECT_EQ(c.agent.device_id, "edge-cam-0042");
  EXPECT_EQ(c.agent.device_key, "/etc/mlfx/device.key");
  EXPECT_EQ(c.agent.recipients, (std::vector<std::string>{"/etc/mlfx/lab.pub", "/etc/mlfx/lab-backup.pub"}));
  EXPECT_EQ(c.agent.control_socket, "/run/mlfx-agent/control.sock");
  EXPECT_EQ(c.agent.control_group, "mlfx");
  EXPECT_EQ(c.agent.anomaly_socket, "/run/mlfx-agent/anomaly.sock");
  EXPECT_EQ(c.agent.log_format, "journal");
  EXPECT_EQ(c.agent.capture_timeout, seconds(600));

  EXPECT_EQ(c.spool.dir, "/var/spool/mlfx");
  EXPECT_EQ(c.spool.quota, 20 * kGiB);

  ASSERT_TRUE(c.upload);
  EXPECT_EQ(c.upload->server, "intake.lab.example:7443");
  EXPECT_EQ(c.upload->ca, "/etc/mlfx/tls/ca.pem");
  EXPECT_EQ(c.upload->cert, "/etc/mlfx/tls/device.pem");
  EXPECT_EQ(c.upload->key, "/etc/mlfx/device.key");
  EXPECT_EQ(c.upload->crl, "/etc/mlfx/tls/crl.pem");
  EXPECT_EQ(c.upload->intake_key, "/etc/mlfx/tls/intake.pub");
  EXPECT_EQ(c.upload->bandwidth, 2 * kMiB);
  EXPECT_EQ(c.upload->poll, seconds(5));

  ASSERT_TRUE(c.lab_requests);
  EXPECT_EQ(c.lab_requests->signers, std::vector<std::string>{"/etc/mlfx/lab-requests.pub"});
  EXPECT_EQ(c.lab_requests->max_age, seconds(300));

  ASSERT_EQ(c.targets.size(), 2u);
  const TargetSpec* perception = c.target("perception");
  ASSERT_NE(perception, nullptr);
  EXPECT_EQ(perception->line, line_of(text, "name = \"perception\"") - 1);
  EXPECT_EQ(perception->unit, std::vector<std::string>{"perception.service"});
  EXPECT_EQ(perception->comm, std::vector<std::string>{"python3"});
  EXPECT_EQ(perception->cmdline, "perception/serve\\.py(\\s|$)");
  ASSERT_TRUE(perception->cmdline_re);
  EXPECT_TRUE(std::regex_search("/usr/bin/python3 /opt/perception/serve.py --port 8080", *perception->cmdline_re));
  EXPECT_FALSE(std::regex_search("/usr/bin/python3 /opt/perception/serve.pyc", *perception->cmdline_re));
  EXPECT_TRUE(perception->exe.empty() && perception->cgroup.empty() && perception->pid.empty());
  const TargetSpec* tracker = c.target("tracker");
  ASSERT_NE(tracker, nullptr);
  EXPECT_EQ(tracker->exe, std::vector<std::string>{"/usr/bin/python3.11"});
  EXPECT_EQ(tracker->cgroup, std::vector<std::string>{"/system.slice/tracker.service"});
  EXPECT_EQ(c.target("nobody"), nullptr);

  ASSERT_EQ(c.rules.size(), 5u);
  const RuleSpec& crash = c.rules[0];
  EXPECT_EQ(crash.name, "crash");
  EXPECT_EQ(crash.line, line_of(text, "name = \"crash\"") - 1);
  EXPECT_EQ(crash.targets, (std::vector<std::string>{"perception", "tracker"}));
  EXPECT_EQ(crash.on, std::vector<TriggerKind>{TriggerKind::kFatalSignal});
  EXPECT_EQ(crash.signals, (std::vector<int>{SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}));
  EXPECT_EQ(crash.sources, (std::vector<SourceKind>{SourceKind::kGpu, SourceKind::kProcess}));
  EXPECT_EQ(crash.max_captures, 3u);
  EXPECT_EQ(crash.window, seconds(3600));
  EXPECT_EQ(crash.cooldown, seconds(60));

  const RuleSpec& tamper = c.rules[1];
  EXPECT_EQ(tamper.name, "tamper");
  EXPECT_TRUE(tamper.targets.empty());  // every target
  EXPECT_EQ(tamper.on, (std::vector<TriggerKind>{TriggerKind::kPtraceAttach, TriggerKind::kMemoryWrite,
                                                 TriggerKind::kLibraryInjection, TriggerKind::kModuleLoad}));
  EXPECT_TRUE(tamper.signals.empty());
  EXPECT_EQ(tamper.sources, (std::vector<SourceKind>{SourceKind::kProcess, SourceKind::kKmod}));
  EXPECT_EQ(tamper.max_captures, 5u);
  EXPECT_EQ(tamper.cooldown, seconds(30));

  const RuleSpec& oom = c.rules[2];
  EXPECT_EQ(oom.on, (std::vector<TriggerKind>{TriggerKind::kMemoryPressure, TriggerKind::kOomKill}));
  EXPECT_EQ(oom.pressure.stall, microseconds(150'000));
  EXPECT_EQ(oom.pressure.window, microseconds(1'000'000));
  EXPECT_EQ(oom.sources, std::vector<SourceKind>{SourceKind::kProcess});
  EXPECT_EQ(oom.window, seconds(6 * 3600));
  EXPECT_EQ(oom.cooldown, seconds(600));

  EXPECT_EQ(c.rules[3].on, std::vector<TriggerKind>{TriggerKind::kAppAnomaly});
  EXPECT_EQ(c.rules[3].window, seconds(86400));
  EXPECT_EQ(c.rules[4].on, (std::vector<TriggerKind>{TriggerKind::kOnDemand, TriggerKind::kLabRequest}));
  EXPECT_EQ(c.rules[4].cooldown, seconds(0));
  EXPECT_EQ(c.rules[4].max_captures, 10u);

  auto names = [](const std::vector<const RuleSpec*>& rules) {
    std::vector<std::string> out;
    for (const RuleSpec* r : rules) out.push_back(r->name);
    return out;
  };
  EXPECT_EQ(names(c.rules_for("perception", TriggerKind::kFatalSignal)), std::vector<std::string>{"crash"});
  EXPECT_EQ(names(c.rules_for("tracker", TriggerKind::kMemoryPressure)), std::vector<std::string>{});
  EXPECT_EQ(names(c.rules_for("perception", TriggerKind::kMemoryPressure)), std::vector<std::string>{"oom"});
  EXPECT_EQ(names(c.rules_for("tracker", TriggerKind::kModuleLoad)), std::vector<std::string>{"tamper"});
  EXPECT_EQ(names(c.rules_for("tracker", TriggerKind::kOnDemand)), std::vector<std::string>{"requested"});
}

TEST(DaemonConfig, DefaultsFillWhatIsLeftOut) {
  const DaemonConfig c = parsed(kValid);
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof host - 1), 0);
  EXPECT_EQ(c.path, kPath);
  EXPECT_EQ(c.agent.device_id, host);
  EXPECT_EQ(c.agent.control_socket, "/run/mlfx-agent/control.sock");
  EXPECT_FALSE(c.agent.control_group);
  EXPECT_EQ(c.agent.anomaly_socket, "/run/mlfx-agent/anomaly.sock");
  EXPECT_EQ(c.agent.log_format, "journal");
  EXPECT_EQ(c.agent.capture_timeout, seconds(600));
  EXPECT_EQ(c.spool.dir, "/var/spool/mlfx");
  EXPECT_FALSE(c.spool.quota);
  EXPECT_FALSE(c.upload);
  EXPECT_FALSE(c.lab_requests);
  ASSERT_EQ(c.targets.size(), 1u);
  EXPECT_EQ(c.targets[0].line, 4);
  EXPECT_FALSE(c.targets[0].cmdline);
  EXPECT_FALSE(c.targets[0].cmdline_re);
  ASSERT_EQ(c.rules.size(), 1u);
  const RuleSpec& r = c.rules[0];
  EXPECT_EQ(r.line, 7);
  EXPECT_TRUE(r.targets.empty());
  EXPECT_EQ(r.signals, (std::vector<int>{SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}));
  EXPECT_EQ(r.sources, std::vector<SourceKind>{SourceKind::kProcess});
  EXPECT_EQ(r.pressure.stall, microseconds(150'000));
  EXPECT_EQ(r.pressure.window, microseconds(1'000'000));
  EXPECT_EQ(r.max_captures, 3u);
  EXPECT_EQ(r.window, seconds(3600));
  EXPECT_EQ(r.cooldown, seconds(60));

  const DaemonConfig u = parsed(kValid + "[upload]\nserver = \"[::1]:7443\"\nca = \"/c\"\ncert = \"/d\"\nkey = \"/k\"\n");
  ASSERT_TRUE(u.upload);
  EXPECT_EQ(u.upload->poll, seconds(5));
  EXPECT_FALSE(u.upload->crl);
  EXPECT_FALSE(u.upload->intake_key);
  EXPECT_FALSE(u.upload->bandwidth);
}

TEST(DaemonConfig, ValueForms) {
  // Durations: units, fractions, integers as seconds; sizes: binary units, fractions, bytes.
  const DaemonConfig c = parsed(kAgent + "capture_timeout = 90\n[spool]\nquota = \"1.5T\"\n" + kTarget +
                                "pid = [42, 4242]\nexe = \"/usr/bin/python3.11\"\n" + kRule +
                                "window = \"1.5h\"\ncooldown = \"2m\"\nsignals = [\"SEGV\", 6, \"SIGBUS\"]\n"
                                "sources = [\"process\", \"lime\", \"gpu\"]\n");
  EXPECT_EQ(c.agent.capture_timeout, seconds(90));
  EXPECT_EQ(c.spool.quota, 3 * kGiB * 1024 / 2);
  EXPECT_EQ(c.targets[0].pid, (std::vector<pid_t>{42, 4242}));
  EXPECT_EQ(c.targets[0].exe, std::vector<std::string>{"/usr/bin/python3.11"});
  EXPECT_EQ(c.rules[0].window, seconds(5400));
  EXPECT_EQ(c.rules[0].cooldown, seconds(120));
  EXPECT_EQ(c.rules[0].signals, (std::vector<int>{SIGSEGV, SIGABRT, SIGBUS}));
  // The GPU first, the rest in the order written.
  EXPECT_EQ(c.rules[0].sources, (std::vector<SourceKind>{SourceKind::kGpu, SourceKind::kProcess, SourceKind::kLime}));

  EXPECT_EQ(parsed(kAgent + "[spool]\nquota = 1048576\n" + kTarget + kRule).spool.quota, kMiB);
  EXPECT_EQ(parsed(kAgent + "[spool]\nquota = \"512MiB\"\n" + kTarget + kRule).spool.quota, 512 * kMiB);
  const DaemonConfig p = parsed(kAgent + kTarget + "[[rule]]\nname = \"oom\"\non = [\"memory-pressure\"]\n"
                                "memory_pressure = { stall = \"500ms\", window = \"10s\" }\n");
  EXPECT_EQ(p.rules[0].pressure.stall, microseconds(500'000));
  EXPECT_EQ(p.rules[0].pressure.window, microseconds(10'000'000));
  EXPECT_TRUE(p.rules[0].signals.empty());
}

TEST(DaemonConfig, TriggerAndSourceNames) {
  for (TriggerKind kind : {TriggerKind::kFatalSignal, TriggerKind::kMemoryPressure, TriggerKind::kOomKill,
                           TriggerKind::kPtraceAttach, TriggerKind::kMemoryWrite, TriggerKind::kModuleLoad,
                           TriggerKind::kAppAnomaly, TriggerKind::kOnDemand, TriggerKind::kLabRequest,
                           TriggerKind::kLibraryInjection, TriggerKind::kCudaError})
    EXPECT_EQ(parse_trigger_kind(trigger_kind_name(kind)), kind) << trigger_kind_name(kind);
  EXPECT_EQ(trigger_kind_name(TriggerKind::kMemoryWrite), "memory-write");
  EXPECT_EQ(parse_trigger_kind("oom-kill"), TriggerKind::kOomKill);
  EXPECT_EQ(parse_trigger_kind("cuda-error"), TriggerKind::kCudaError);
  EXPECT_EQ(parse_trigger_kind("segfault"), std::nullopt);
  EXPECT_EQ(parse_trigger_kind(""), std::nullopt);
  EXPECT_EQ(source_kind_name(SourceKind::kProcess), "process");
  EXPECT_EQ(source_kind_name(SourceKind::kLime), "lime");
  EXPECT_EQ(source_kind_name(SourceKind::kKmod), "kmod");
  EXPECT_EQ(source_kind_name(SourceKind::kGpu), "gpu");
}

TEST(DaemonConfig, UnknownKeysAreRefusedWithTheValidOnes) {
  expect_refused_here(kAgent + "recipents = [\"/x.pub\"]  # HERE\n" + kTarget + kRule,
                      {"unknown key \"recipents\" in [agent]", "did you mean recipients?", "device_key"});
  expect_refused_here(kValid + "cooldwn = \"1m\"  # HERE\n",
                      {"unknown key \"cooldwn\" in [[rule]] #1", "cooldown", "max_captures"});
  expect_refused_here(kAgent + kTarget + "commm = \"x\"  # HERE\n" + kRule,
                      {"\"commm\"", "did you mean comm?", "cmdline"});
  expect_refused_here(kValid + "[uplaod]  # HERE\nserver = \"h:1\"\n", {"\"uplaod\" at the top level", "upload"});
  expect_refused_here(kValid + "[spool]\nsize = \"1G\"  # HERE\n", {"\"size\" in [spool]", "dir, quota"});
  expect_refused_here(kAgent + kTarget + "[[rule]]\nname = \"oom\"\non = [\"memory-pressure\"]\n"
                      "memory_pressure = { stal = \"1s\" }  # HERE\n",
                      {"\"stal\"", "memory_pressure of [[rule]]", "stall, window"});
  // Column too: the key's own place.
  auto c = parse_config(kAgent + "  devce_id = \"x\"\n" + kTarget + kRule, kPath);
  ASSERT_FALSE(c);
  EXPECT_TRUE(c.error().message().starts_with(std::string(kPath) + ":4:3: ")) << c.error().message();
}

TEST(DaemonConfig, TypeMismatchesSayTheExpectedType) {
  expect_refused_here("[agent]\ndevice_key = 5  # HERE\nrecipients = [\"/r\"]\n" + kTarget + kRule,
                      {"[agent] device_key must be a string, not an integer"});
  expect_refused_here("[agent]\ndevice_key = \"/k\"\nrecipients = \"/r.pub\"  # HERE\n" + kTarget + kRule,
                      {"recipients must be an array of strings, not a string"});
  expect_refused_here(kAgent + kTarget + "pid = \"42\"  # HERE\n" + kRule, {"pid must be an integer"});
  expect_refused_here(kValid + "cooldown = 1.5  # HERE\n", {"cooldown must be a duration", "floating-point"});
  expect_refused_here(kValid + "max_captures = \"3\"  # HERE\n", {"max_captures must be an integer, not a string"});
  expect_refused_here(kValid + "on = [\"oom-kill\", 3]  # HERE\n", {});  // a duplicate key: TOML's own refusal
  expect_refused_here(kAgent + kTarget + "[[rule]]\nname = \"r\"\non = [\"oom-kill\", 3]  # HERE\n",
                      {"on must be an array of strings, but holds an integer"});
  expect_refused_here(kAgent + "spool = 3  # HERE\n" + kTarget + kRule, {"unknown key \"spool\" in [agent]"});
  expect_refused_here("spool = 3  # HERE\n" + kValid, {"spool must be a table, not an integer"});
  expect_refused_here("[target]  # HERE\nname = \"t\"\ncomm = \"x\"\n" + kAgent + kRule,
                      {"[[target]]", "not as a table"});
}

TEST(DaemonConfig, BadValuesAreRefusedAtTheirLine) {
  expect_refused_here(kAgent + kTarget + "cmdline = 'serve(\\.py'  # HERE\n" + kRule,
                      {"cmdline", "serve(\\.py", "not a valid regular expression"});
  expect_refused_here(kAgent + kTarget + kRule.substr(0, kRule.find("on =")) + "on = [\"segfault\"]  # HERE\n",
                      {"unknown trigger \"segfault\"", "fatal-signal", "memory-write", "lab-request"});
  expect_refused_here(kValid + "targets = [\"perception\", \"nope\"]  # HERE\n",
                      {"names \"nope\"", "no [[target]] has that name", "perception"});
  expect_refused_here(kValid + "window = \"5 minutes\"  # HERE\n", {"window \"5 minutes\" is not a duration"});
  expect_refused_here(kValid + "window = \"5\"  # HERE\n", {"is not a duration"});
  expect_refused_here(kValid + "window = \"0s\"  # HERE\n", {"window must be at least 1s"});
  expect_refused_here(kAgent + "capture_timeout = \"1500ms\"  # HERE\n" + kTarget + kRule,
                      {"capture_timeout must be a whole number of seconds"});
  expect_refused_here(kValid + "[spool]\nquota = \"20GB\"  # HERE\n", {"quota \"20GB\" is not a size", "20G"});
  expect_refused_here(kValid + "[spool]\nquota = -1  # HERE\n", {"quota must be a size"});
  expect_refused_here(kValid + "[spool]\nquota = \"0G\"  # HERE\n", {"quota must not be zero"});
  expect_refused_here(kValid + "[spool]\nquota = \"99999999999T\"  # HERE\n", {"is not a size"});
  expect_refused_here(kValid + "max_captures = 0  # HERE\n", {"max_captures must be between 1 and"});
  expect_refused_here(kAgent + "log_format = \"xml\"  # HERE\n" + kTarget + kRule, {"\"xml\"", "journal"});
  expect_refused_here(kAgent + "control_socket = \"run/c.sock\"  # HERE\n" + kTarget + kRule,
                      {"\"run/c.sock\" must be an absolute path"});
  expect_refused_here(kAgent + kTarget + "comm = \"python3-perception\"  # HERE\n" + kRule, {});  // duplicate key
  expect_refused_here(kAgent + "[[target]]\nname = \"t\"\ncomm = [\"ok\", \"perception-server\"]  # HERE\n" + kRule,
                      {"\"perception-server\" is longer than 15 bytes", "\"perception-serv\""});
  expect_refused_here(kAgent + "[[target]]\nname = \"t\"\nunit = \"perception\"  # HERE\n" + kRule,
                      {"\"perception\" is not a systemd unit", "NAME.service"});
  expect_refused_here(kAgent + "[[target]]\nname = \"t\"\ncgroup = \"system.slice\"  # HERE\n" + kRule,
                      {"must be a cgroup path starting with /"});
  expect_refused_here(kAgent + "[[target]]\nname = \"t\"\npid = [1, 0]  # HERE\n" + kRule, {"pid 0 is not a process id"});
  expect_refused_here(kAgent + "[[target]]\nname = \"t\"\nexe = \"python3\"  # HERE\n" + kRule,
                      {"exe \"python3\" must be an absolute path"});
  expect_refused_here(kAgent + "[[target]]\nname = \"t\"\nexe = []  # HERE\n" + kRule, {"exe is an empty array"});
  expect_refused_here(kAgent + "[[target]]\nname = \"a b\"  # HERE\ncomm = \"x\"\n" + kRule,
                      {"\"a b\" may hold only letters, digits"});
  expect_refused_here(kValid + "sources = [\"process\", \"disk\"]  # HERE\n", {"unknown source \"disk\"", "kmod"});
  expect_refused_here(kValid + "sources = [\"gpu\", \"gpu\"]  # HERE\n", {"lists \"gpu\" twice"});
  expect_refused_here(kValid + "sources = []  # HERE\n", {"sources is an empty array"});
  expect_refused_here(kValid + "signals = [\"SIGKILL\"]  # HERE\n", {"\"SIGKILL\" is not one of them", "SIGABRT"});
  expect_refused_here(kValid + "signals = [9]  # HERE\n", {"signal 9 is not one of them"});
  expect_refused_here(kAgent + kTarget + "[[rule]]\nname = \"r\"\non = []  # HERE\n", {"on is an empty array"});
}

TEST(DaemonConfig, UploadAndLabRequestsAreChecked) {
  const std::string upload = "[upload]\nca = \"/c\"\ncert = \"/d\"\nkey = \"/k\"\n";
  expect_refused_here(kValid + upload + "server = \"intake.lab\"  # HERE\n", {"[upload] server wants HOST:PORT"});
  expect_refused_here(kValid + upload + "server = \"intake.lab:0\"  # HERE\n", {"'0' is not a port number"});
  expect_refused_here(kValid + upload + "server = \"intake.lab:70000\"  # HERE\n", {"is not a port number"});
  expect_refused_here(kValid + upload + "server = \"h:1\"\nbandwidth = \"fast\"  # HERE\n",
                      {"bandwidth \"fast\" is not a size per second"});
  expect_refused_here(kValid + upload + "server = \"h:1\"\nintake_key = \"intake.pub\"  # HERE\n",
                      {"intake_key \"intake.pub\" must be an absolute path"});
  EXPECT_EQ(parsed(kValid + upload + "server = \"h:1\"\nintake_key = \"sha256:ab12\"\nbandwidth = \"2M/s\"\n")
                .upload->bandwidth,
            2 * kMiB);
  expect_refused_here(kValid + "[upload]  # HERE\nserver = \"h:1\"\nca = \"/c\"\ncert = \"/d\"\n",
                      {"[upload] needs key"});
  expect_refused_here(kValid + "[lab_requests]  # HERE\nsigners = [\"/l.pub\"]\n",
                      {"[lab_requests] needs an [upload] section"});
  expect_refused_here(kValid + upload + "server = \"h:1\"\n[lab_requests]  # HERE\nmax_age = \"1m\"\n",
                      {"[lab_requests] needs signers"});
  expect_refused_here(kAgent + kTarget + "[[rule]]\nname = \"r\"\non = [\"on-demand\", \"lab-request\"]  # HERE\n",
                      {"\"lab-request\" needs a [lab_requests] section"});
}

TEST(DaemonConfig, DuplicateNamesAreRefused) {
  const std::string text = kAgent + kTarget + "[[target]]\nname = \"perception\"  # HERE\npid = 1\n" + kRule;
  expect_refused_here(text, {"[[target]] #2 name \"perception\" is already used by the one on line 4"});
  expect_refused_here(kValid + "[[rule]]\nname = \"crash\"  # HERE\non = [\"oom-kill\"]\n",
                      {"[[rule]] #2 name \"crash\" is already used by the one on line 7"});
  expect_refused_here(kValid + "targets = [\"perception\", \"perception\"]  # HERE\n",
                      {"lists \"perception\" twice"});
  expect_refused_here(kValid.substr(0, kValid.rfind("on =")) + "on = [\"oom-kill\", \"oom-kill\"]  # HERE\n",
                      {"lists \"oom-kill\" twice"});
}

TEST(DaemonConfig, MissingRequiredPartsAreNamed) {
  expect_refused_here("[agent]  # HERE\nrecipients = [\"/r\"]\n" + kTarget + kRule, {"[agent] needs device_key"});
  expect_refused_here("[agent]  # HERE\ndevice_key = \"/k\"\n" + kTarget + kRule, {"[agent] needs recipients"});
  expect_refused(kTarget + kRule, 1, {":1:1: no [agent] table", "device_key"});
  expect_refused(kAgent + kRule, 1, {":1:1: no [[target]]"});
  expect_refused(kAgent + kTarget, 1, {":1:1: no [[rule]]"});
  expect_refused_here(kAgent + "[[target]]  # HERE\ncomm = \"x\"\n" + kRule, {"[[target]] #1 needs name"});
  expect_refused_here(kAgent + "[[target]]  # HERE\nname = \"t\"\n" + kRule,
                      {"[[target]] \"t\" selects no process", "exe, comm, cmdline, cgroup, unit or pid"});
  expect_refused_here(kAgent + kTarget + "[[rule]]  # HERE\nname = \"r\"\n",
                      {"[[rule]] \"r\" needs on", "fatal-signal"});
}

TEST(DaemonConfig, SettingsOfTriggersAreOnlyTakenWithTheirTrigger) {
  expect_refused_here(kAgent + kTarget + "[[rule]]\nname = \"r\"\non = [\"oom-kill\"]\nsignals = [\"SIGSEGV\"]  # HERE\n",
                      {"signals is only meaningful with \"fatal-signal\" in on"});
  expect_refused_here(kValid + "memory_pressure = { stall = \"100ms\" }  # HERE\n",
                      {"memory_pressure is only meaningful with \"memory-pressure\""});
  const std::string oom = kAgent + kTarget + "[[rule]]\nname = \"oom\"\non = [\"memory-pressure\"]\n";
  expect_refused_here(oom + "memory_pressure = { window = \"20s\" }  # HERE\n", {"window must be between 500ms and 10s"});
  expect_refused_here(oom + "memory_pressure = { stall = \"2s\", window = \"1s\" }  # HERE\n",
                      {"stall must be more than zero and at most the window (1000ms)"});
  expect_refused_here(oom + "memory_pressure = { stall = \"bad\" }  # HERE\n", {"stall \"bad\" is not a duration"});
}

TEST(DaemonConfig, WholeMemoryIsReadOnce) {
  expect_refused_here(kValid + "sources = [\"lime\", \"process\", \"kmod\"]  # HERE\n",
                      {"both \"lime\" and \"kmod\"", "pick one"});
}

TEST(DaemonConfig, TomlSyntaxErrorsGiveTheirPlace) {
  expect_refused_here("[agent]\ndevice_key = \"/etc/mlfx/device.key  # HERE\nrecipients = [\"/r\"]\n" + kTarget + kRule,
                      {"not valid TOML"});
  expect_refused_here(kValid + "window = 1h  # HERE\n", {"not valid TOML"});
  expect_refused_here(kAgent + "[agent]  # HERE\n" + kTarget + kRule, {"not valid TOML"});
}

TEST(DaemonConfig, LoadConfigNamesTheFile) {
  char dir_template[] = "/tmp/mlfx-daemon-config-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string path = std::string(dir_template) + "/agent.toml";
  {
    std::ofstream out(path);
    out << kAgent << "recipents = []\n" << kTarget << kRule;
  }
  auto typo = load_config(path);
  ASSERT_FALSE(typo);
  EXPECT_EQ(typo.error().code(), Errc::kInvalidArgument);
  EXPECT_TRUE(typo.error().message().starts_with(path + ":4:1: unknown key \"recipents\"")) << typo.error().message();
  unlink(path.c_str());
  auto missing = load_config(path);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(missing.error().to_string().find(path), std::string::npos) << missing.error().to_string();
  rmdir(dir_template);
}

}  // namespace
}  // namespace mlfx::agent::daemon
