// mlfx-agent spool add / status: the store-and-forward queue of sealed bundles.
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

int run_status(const SpoolArgs& a) {
  auto spool = open_spool(a.dir);
  if (!spool) return report_error("status", spool.error());
  auto queue = spool->queue();
  auto rejected = spool->rejected();
  auto used = spool->used_bytes();
  auto receipts = spool->receipt_count();
  if (!queue || !rejected || !used || !receipts)
    return report_error("status", !queue ? queue.error() : !rejected ? rejected.error() : !used ? used.error() : receipts.error());
  const bool shipping = spool->shipper_running();
  uint64_t queued_bytes = 0;
  for (const auto& e : *queue) queued_bytes += e.file_size;
  if (a.json) {
    json::Json q = json::Json::array(), r = json::Json::array();
    for (const auto& e : *queue) q.push_back(e.to_json());
    for (const auto& e : *rejected) r.push_back(e.to_json());
    json::Json j = {{"spool", a.dir}, {"quota_bytes", spool->quota()}, {"used_bytes", *used},
                    {"shipper_running", shipping}, {"queue", q}, {"rejected", r}, {"receipts", *receipts}};
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("spool %s: %s used of a %s quota; shipper %s\n", a.dir.c_str(), human_bytes(double(*used)).c_str(),
              human_bytes(double(spool->quota())).c_str(), shipping ? "running" : "not running");
  std::printf("queue: %zu bundle(s), %s\n", queue->size(), human_bytes(double(queued_bytes)).c_str());
  for (const auto& e : *queue) {
    std::printf("  %s  %10s  added %s  attempts %u\n", e.name.c_str(), human_bytes(double(e.file_size)).c_str(),
                e.added_utc.c_str(), e.attempts);
    if (!e.last_error.empty()) std::printf("      last try %s: %s\n", e.last_attempt_utc.c_str(), e.last_error.c_str());
  }
  if (!rejected->empty()) {
    std::printf("rejected by the intake (kept for an operator): %zu\n", rejected->size());
    for (const auto& e : *rejected) std::printf("  %s  %s\n", e.name.c_str(), e.rejected_reason.c_str());
  }
  std::printf("receipts: %zu bundle(s) shipped\n", *receipts);
  return 0;
}

}  // namespace

void add_spool_commands(CLI::App& app, Registry& registry) {
  auto args = std::make_shared<SpoolArgs>();
  SpoolArgs& sp = *args;
  auto* spool_cmd = app.add_subcommand("spool", "manage the spool of bundles waiting to be shipped")->require_subcommand(1);
  auto* spool_add = spool_cmd->add_subcommand("add", "queue sealed bundles for shipping (copied; the files stay)");
  spool_add->add_option("--spool", sp.dir, "spool directory (created when missing)")->required();
  spool_add->add_option("files", sp.files, "bundles to queue")->required();
  spool_add->add_option("--quota", sp.quota, "spool disk quota, e.g. 20G (kept for later runs)")
      ->transform(CLI::AsSizeValue(false));

  auto* status = app.add_subcommand("status", "show the spool: queued, rejected and shipped bundles");
  status->add_option("--spool", sp.dir, "spool directory")->required();
  status->add_flag("--json", sp.json, "print as JSON");

  registry.add(spool_add, [args] { return run_spool_add(*args); });
  registry.add(status, [args] { return run_status(*args); });
}

}  // namespace mlfx::agent::cli
