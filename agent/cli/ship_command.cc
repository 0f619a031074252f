// mlfx-agent ship: upload the spool's bundles to the lab intake over mutual TLS.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "cli/command.h"
#include "mlfx/base/json.h"
#include "mlfx/base/progress.h"
#include "upload/intake_target.h"
#include "upload/uploader.h"

namespace mlfx::agent::cli {
namespace {

struct ShipArgs {
  std::string spool, server, ca, crl, cert, key, intake_key;
  uint64_t bandwidth = 0;
  double timeout_s = 60, backoff_min_s = 1, backoff_max_s = 300, poll_s = 5;
  bool once = false, until_empty = false, json = false;
};

Result<IntakeTarget> ship_target(const ShipArgs& a) {
  return intake_target({a.server, a.ca, a.cert, a.key, a.crl, a.intake_key, a.bandwidth,
                        std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000))});
}

void print_upload(const UploadOutcome& u, bool as_json) {
  if (as_json) {
    std::printf("%s\n", u.to_json().dump().c_str());
  } else if (u.result == "stored" || u.result == "duplicate") {
    const double rate = u.seconds > 0 ? double(u.sent_bytes) / u.seconds : 0;
    std::printf("%s %s: %s, %s already at the intake, %s sent in %.2f s (%s/s); receipt verified; intake CRL %s\n",
                u.result.c_str(), u.name.c_str(), human_bytes(double(u.file_size)).c_str(),
                human_bytes(double(u.held_before)).c_str(), human_bytes(double(u.sent_bytes)).c_str(), u.seconds,
                human_bytes(rate).c_str(), u.crl_checked ? "checked" : "not checked");
  } else {
    std::printf("%s %s: %s\n", u.result.c_str(), u.name.c_str(), u.error.c_str());
  }
  std::fflush(stdout);
}

int run_ship(const ShipArgs& a) {
  signal(SIGPIPE, SIG_IGN);
  auto target = ship_target(a);
  if (!target) return report_error("ship", target.error());
  if (a.crl.empty())
    std::fprintf(stderr, "mlfx-agent: ship: warning: no --crl: the intake's certificate is not checked for "
                         "revocation (CRL not checked)\n");
  auto spool = open_spool(a.spool);
  if (!spool) return report_error("ship", spool.error());
  // One shipper per spool: a second would upload the same bundles twice over.
  auto lock = spool->lock_shipping();
  if (!lock) return report_error("ship", lock.error());
  bool any_rejected = false;
  auto on_upload = [&](const UploadOutcome& u) {
    any_rejected |= u.result == "rejected";
    print_upload(u, a.json);
  };
  unsigned failures = 0;
  const auto base = std::chrono::milliseconds(static_cast<int64_t>(a.backoff_min_s * 1000));
  const auto cap = std::chrono::milliseconds(static_cast<int64_t>(a.backoff_max_s * 1000));
  for (;;) {
    PassReport pass = ship_pass(*spool, *target, on_upload);
    auto left = spool->queue();
    if (!left) return report_error("ship", left.error());
    if (pass.ok) failures = 0;
    if (!pass.ok) {
      if (a.json)
        std::printf("%s\n", json::Json({{"pass", "failed"}, {"error", pass.error}}).dump().c_str());
      else
        std::fprintf(stderr, "mlfx-agent: ship: %s\n", pass.error.c_str());
      std::fflush(stdout);
    }
    if (a.once || (a.until_empty && left->empty())) {
      if (!left->empty())
        std::fprintf(stderr, "mlfx-agent: ship: %zu bundle(s) still queued; they are retried on the next run\n",
                     left->size());
      if (any_rejected)
        std::fprintf(stderr, "mlfx-agent: ship: the intake rejected bundle(s); see mlfx-agent status\n");
      return left->empty() && !any_rejected ? 0 : 1;
    }
    std::chrono::milliseconds wait;
    if (pass.ok) {
      wait = std::chrono::milliseconds(static_cast<int64_t>(a.poll_s * 1000));
    } else {
      wait = backoff_delay(failures++, base, cap);
      if (!a.json) std::fprintf(stderr, "mlfx-agent: ship: retrying in %.1f s\n", double(wait.count()) / 1000);
    }
    std::this_thread::sleep_for(wait);
  }
}

}  // namespace

void add_ship_command(CLI::App& app, Registry& registry) {
  auto args = std::make_shared<ShipArgs>();
  ShipArgs& sh = *args;
  auto* ship = app.add_subcommand("ship", "upload the spool's bundles to the lab intake over mutual TLS; "
                                          "resumable, a bundle leaves the spool only with a verified receipt");
  ship->add_option("--spool", sh.spool, "spool directory")->required();
  ship->add_option("--server", sh.server, "intake HOST:PORT")->required();
  ship->add_option("--ca", sh.ca, "lab CA certificate: the only trust anchor")->required();
  ship->add_option("--crl", sh.crl, "the lab CA's crl.pem: refuse an intake whose certificate it revokes "
                                    "(without it: not checked, and each upload says so)");
  ship->add_option("--cert", sh.cert, "this device's certificate from 'mlfx ca issue --device'")->required();
  ship->add_option("--key", sh.key, "this device's key (the one that signs its bundles)")->required();
  ship->add_option("--intake-key", sh.intake_key, "pin the intake's receipt key: its .pub or sha256: fingerprint");
  ship->add_option("--bandwidth", sh.bandwidth, "at most this many bytes per second, e.g. 2M (default: no limit)")
      ->transform(CLI::AsSizeValue(false));
  ship->add_option("--timeout", sh.timeout_s, "seconds without progress before a connection is given up (default 60)")
      ->check(CLI::PositiveNumber);
  ship->add_option("--backoff-min", sh.backoff_min_s, "first retry delay ceiling in seconds (default 1)")
      ->check(CLI::PositiveNumber);
  ship->add_option("--backoff-max", sh.backoff_max_s, "largest retry delay in seconds (default 300)")
      ->check(CLI::PositiveNumber);
  ship->add_option("--poll", sh.poll_s, "seconds between looks at an empty queue (default 5)")->check(CLI::PositiveNumber);
  auto* ship_mode = ship->add_option_group("mode", "default: run until stopped");
  ship_mode->add_flag("--once", sh.once, "one pass over the queue; exit 0 when every bundle was stored");
  ship_mode->add_flag("--until-empty", sh.until_empty, "retry with backoff until the queue is empty, then exit");
  ship_mode->require_option(0, 1);
  ship->add_flag("--json", sh.json, "one JSON line per upload");

  registry.add(ship, [args] { return run_ship(*args); });
}

}  // namespace mlfx::agent::cli
