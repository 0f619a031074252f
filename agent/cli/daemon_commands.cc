// mlfx-agent run: the armed daemon (daemon/daemon.h).
// mlfx-agent trigger: a capture on demand, through the daemon's control socket.
// mlfx-agent status: the daemon's armed targets, rules, recent triggers, and the spool.
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "daemon/config.h"
#include "daemon/control.h"
#include "daemon/daemon.h"
#include "mlfx/base/progress.h"

namespace mlfx::agent::cli {
namespace {

constexpr const char* kDefaultSocket = "/run/mlfx-agent/control.sock";

struct DaemonArgs {
  std::string config, socket, target, reason, spool;
  pid_t pid = 0;
  bool check = false, json = false, no_wait = false;
  int timeout_s = 900;
};

int run_daemon(const DaemonArgs& a) {
  // Before any thread exists: the daemon reads these signals from signalfds.
  daemon::block_daemon_signals();
  auto config = daemon::load_config(a.config);
  if (!config) return report_error("run", config.error());
  daemon::Log log(config->agent.log_format);
  if (a.check) {
    std::printf("%s: %zu target(s), %zu rule(s): the configuration is valid\n", a.config.c_str(),
                config->targets.size(), config->rules.size());
    return 0;
  }
  Progress::set_enabled(false);
  auto d = daemon::Daemon::start(std::move(*config), log);
  if (!d) return report_error("run", d.error());
  return (*d)->run();
}

// The control socket: --socket, or the one --config names, or the default.
Result<std::string> control_socket(const DaemonArgs& a) {
  if (!a.socket.empty()) return a.socket;
  if (a.config.empty()) return std::string(kDefaultSocket);
  MLFX_ASSIGN(daemon::DaemonConfig c, daemon::load_config(a.config));
  return c.agent.control_socket;
}

void print_trigger(const json::Json& t) {
  std::printf("trigger %llu: %s of target %s pid %d (%s): %s%s%s\n",
              static_cast<unsigned long long>(t.value("id", uint64_t{0})), t.value("kind", "").c_str(),
              t.value("target", "").c_str(), t.value("pid", 0), t.value("comm", "").c_str(), t.value("outcome", "").c_str(),
              t.value("detail", "").empty() ? "" : ": ", t.value("detail", "").c_str());
}

int run_trigger(const DaemonArgs& a) {
  auto path = control_socket(a);
  if (!path) return report_error("trigger", path.error());
  json::Json req = {{"op", "trigger"}, {"reason", a.reason}, {"wait", !a.no_wait}};
  if (a.pid) req["pid"] = a.pid;
  else req["target"] = a.target;
  auto reply = daemon::request(*path, req, std::chrono::seconds(a.timeout_s));
  if (!reply) return report_error("trigger", reply.error());
  if (!reply->value("ok", false))
    return report_error("trigger", Error(Errc::kInvalidArgument, "the daemon refused: " + reply->value("error", "?")));
  json::Json triggers = reply->contains("trigger") ? json::Json::array({(*reply)["trigger"]}) : (*reply)["triggers"];
  if (a.json) std::printf("%s\n", triggers.dump(2).c_str());
  int status = 0;
  for (const auto& t : triggers) {
    if (!a.json) print_trigger(t);
    const std::string outcome = t.value("outcome", "");
    if (outcome != "captured" && outcome != "queued") status = kExitFailure;
  }
  return status;
}

void print_daemon_status(const json::Json& s) {
  std::printf("mlfx-agent pid %d, running since %s, configuration %s\n", s.value("pid", 0), s.value("since", "").c_str(),
              s.value("config", "").c_str());
  const json::Json& ebpf = s["ebpf"];
  if (!ebpf.value("unavailable", "").empty()) std::printf("eBPF triggers: unavailable: %s\n", ebpf["unavailable"].get<std::string>().c_str());
  for (const auto& h : ebpf["hooks"])
    if (!h.value("available", false)) std::printf("  %s: unavailable: %s\n", h.value("trigger", "").c_str(), h.value("reason", "").c_str());
  std::printf("armed: %zu process(es)\n", s["armed"].size());
  for (const auto& p : s["armed"]) {
    std::string triggers;
    for (const auto& k : p["triggers"]) triggers += (triggers.empty() ? "" : ", ") + k.get<std::string>();
    std::printf("  pid %-7d %-16s target %-16s %s%s\n", p.value("pid", 0), p.value("comm", "").c_str(),
                p.value("target", "").c_str(), triggers.c_str(), p.value("held", false) ? " (held against fatal signals)" : "");
  }
  std::printf("rules:\n");
  for (const auto& r : s["rules"]) {
    std::string on, sources;
    for (const auto& k : r["on"]) on += (on.empty() ? "" : ", ") + k.get<std::string>();
    for (const auto& k : r["sources"]) sources += (sources.empty() ? "" : "+") + k.get<std::string>();
    std::printf("  %-16s on %s -> %s; at most %u per %llds, cooldown %llds; %llu suppressed\n", r.value("name", "").c_str(),
                on.c_str(), sources.c_str(), r.value("max_captures", 0u), static_cast<long long>(r.value("window_s", 0)),
                static_cast<long long>(r.value("cooldown_s", 0)), static_cast<unsigned long long>(r.value("suppressed", uint64_t{0})));
  }
  const json::Json& c = s["captures"];
  std::printf("captures: %llu captured, %llu failed, %llu queued, %llu triggers suppressed\n",
              static_cast<unsigned long long>(c.value("captured", uint64_t{0})), static_cast<unsigned long long>(c.value("failed", uint64_t{0})),
              static_cast<unsigned long long>(c.value("queued", uint64_t{0})), static_cast<unsigned long long>(c.value("suppressed", uint64_t{0})));
  if (!s["recent_triggers"].empty()) {
    std::printf("recent triggers:\n");
    for (const auto& t : s["recent_triggers"]) {
      std::printf("  %s ", t.value("time", "").c_str());
      print_trigger(t);
    }
  }
}

int run_status(const DaemonArgs& a) {
  json::Json all = json::Json::object();
  std::string spool_dir = a.spool;
  if (a.spool.empty() || !a.socket.empty() || !a.config.empty()) {
    auto path = control_socket(a);
    if (!path) return report_error("status", path.error());
    auto reply = daemon::request(*path, {{"op", "status"}}, std::chrono::seconds(30));
    if (!reply) return report_error("status", reply.error());
    if (!reply->value("ok", false))
      return report_error("status", Error(Errc::kInvalidArgument, "the daemon refused: " + reply->value("error", "?")));
    all["daemon"] = (*reply)["status"];
    if (spool_dir.empty()) spool_dir = all["daemon"]["spool"].value("dir", "");
  }
  if (!spool_dir.empty()) {
    auto spool = spool_status(spool_dir);
    if (!spool) return report_error("status", spool.error());
    all["spool"] = std::move(*spool);
  }
  if (a.json) {
    // `status --spool DIR --json` alone prints the spool's object as it always has.
    std::printf("%s\n", (all.contains("daemon") ? all : all["spool"]).dump(2).c_str());
    return 0;
  }
  if (all.contains("daemon")) print_daemon_status(all["daemon"]);
  if (all.contains("spool")) print_spool_status(all["spool"]);
  return 0;
}

}  // namespace

void add_daemon_commands(CLI::App& app, Registry& registry) {
  auto args = std::make_shared<DaemonArgs>();
  DaemonArgs& d = *args;
  auto* run = app.add_subcommand("run", "the armed daemon: watch the configured targets and capture them when a "
                                        "trigger fires (packaging/mlfx-agent.toml explains the configuration)");
  run->add_option("--config", d.config, "the daemon's TOML configuration")->required();
  run->add_flag("--check", d.check, "check the configuration and exit");

  auto* trigger = app.add_subcommand("trigger", "capture a target now, through the running daemon's rules "
                                                "(a rule with on = [\"on-demand\"])");
  auto* who = trigger->add_option_group("which", "what to capture");
  who->add_option("--pid", d.pid, "an armed target process")->check(CLI::PositiveNumber);
  who->add_option("--target", d.target, "every process of this [[target]]");
  who->require_option(1);
  trigger->add_option("--reason", d.reason, "why (recorded in the bundle and its custody)")->required();
  trigger->add_option("--socket", d.socket, std::string("the daemon's control socket (default ") + kDefaultSocket + ")");
  trigger->add_option("--config", d.config, "take the control socket from this configuration");
  trigger->add_flag("--no-wait", d.no_wait, "return once the capture is queued");
  trigger->add_option("--timeout", d.timeout_s, "seconds to wait for the capture (default 900)")->check(CLI::PositiveNumber);
  trigger->add_flag("--json", d.json, "print the trigger records as JSON");

  auto* status = app.add_subcommand("status", "the running daemon (armed targets, rules, recent triggers) and "
                                              "its spool; or, with --spool alone, a spool directory");
  status->add_option("--spool", d.spool, "a spool directory (alone: no daemon asked)");
  status->add_option("--socket", d.socket, std::string("the daemon's control socket (default ") + kDefaultSocket + ")");
  status->add_option("--config", d.config, "take the control socket from this configuration");
  status->add_flag("--json", d.json, "print as JSON");

  registry.add(run, [args] { return run_daemon(*args); });
  registry.add(trigger, [args] { return run_trigger(*args); });
  registry.add(status, [args] { return run_status(*args); });
}

}  // namespace mlfx::agent::cli
