// mlfx-agent spool add: the store-and-forward queue of sealed bundles (its status: daemon_commands.cc).
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "mlfx/base/json.h"
#include "mlfx/base/progress.h"

namespace mlfx::agent::cli {
namespace {

struct SpoolArgs {
  std::string dir;
  std::vector<std::string> files;
  std::optional<uint64_t> quota;
  bool json = false;
};

int run_spool_add(const SpoolArgs& a) {
  auto spool = open_spool(a.dir, a.quota);
  if (!spool) return report_error("spool add", spool.error());
  for (const auto& f : a.files) {
    auto e = spool->add(f);
    if (!e) return report_error("spool add", std::move(e).error().context("queueing " + f));
    std::printf("queued %s as %s (%s, digest %s)\n", f.c_str(), e->name.c_str(),
                human_bytes(double(e->file_size)).c_str(), e->bundle_digest.c_str());
  }
  return 0;
}

}  // namespace

Result<json::Json> spool_status(const std::string& dir) {
  MLFX_ASSIGN(Spool spool, open_spool(dir));
  MLFX_ASSIGN(auto queue, spool.queue());
  MLFX_ASSIGN(auto rejected, spool.rejected());
  MLFX_ASSIGN(uint64_t used, spool.used_bytes());
  MLFX_ASSIGN(size_t receipts, spool.receipt_count());
  json::Json q = json::Json::array(), r = json::Json::array();
  for (const auto& e : queue) q.push_back(e.to_json());
  for (const auto& e : rejected) r.push_back(e.to_json());
  return json::Json{{"spool", dir}, {"quota_bytes", spool.quota()}, {"used_bytes", used},
                    {"shipper_running", spool.shipper_running()}, {"queue", q}, {"rejected", r}, {"receipts", receipts}};
}

void print_spool_status(const json::Json& s) {
  uint64_t queued_bytes = 0;
  for (const auto& e : s["queue"]) queued_bytes += e["file_size"].get<uint64_t>();
  std::printf("spool %s: %s used of a %s quota; shipper %s\n", s["spool"].get<std::string>().c_str(),
              human_bytes(s["used_bytes"].get<double>()).c_str(), human_bytes(s["quota_bytes"].get<double>()).c_str(),
              s["shipper_running"].get<bool>() ? "running" : "not running");
  std::printf("queue: %zu bundle(s), %s\n", s["queue"].size(), human_bytes(double(queued_bytes)).c_str());
  for (const auto& e : s["queue"]) {
    std::printf("  %s  %10s  added %s  attempts %u\n", e["name"].get<std::string>().c_str(),
                human_bytes(e["file_size"].get<double>()).c_str(), e["added_utc"].get<std::string>().c_str(),
                e["attempts"].get<unsigned>());
    if (e.contains("last_error") && !e["last_error"].get<std::string>().empty())
      std::printf("      last try %s: %s\n", e.value("last_attempt_utc", "").c_str(), e["last_error"].get<std::string>().c_str());
  }
  if (!s["rejected"].empty()) {
    std::printf("rejected by the intake (kept for an operator): %zu\n", s["rejected"].size());
    for (const auto& e : s["rejected"])
      std::printf("  %s  %s\n", e["name"].get<std::string>().c_str(), e.value("rejected_reason", "").c_str());
  }
  std::printf("receipts: %zu bundle(s) shipped\n", s["receipts"].get<size_t>());
}

void add_spool_commands(CLI::App& app, Registry& registry) {
  auto args = std::make_shared<SpoolArgs>();
  SpoolArgs& sp = *args;
  auto* spool_cmd = app.add_subcommand("spool", "manage the spool of bundles waiting to be shipped")->require_subcommand(1);
  auto* spool_add = spool_cmd->add_subcommand("add", "queue sealed bundles for shipping (copied; the files stay)");
  spool_add->add_option("--spool", sp.dir, "spool directory (created when missing)")->required();
  spool_add->add_option("files", sp.files, "bundles to queue")->required();
  spool_add->add_option("--quota", sp.quota, "spool disk quota, e.g. 20G (kept for later runs)")
      ->transform(CLI::AsSizeValue(false));

  registry.add(spool_add, [args] { return run_spool_add(*args); });
}

}  // namespace mlfx::agent::cli
