// mlfx-agent: the device-side command line. Only this file turns errors into exit codes:
// 0 success, 1 failure (the message says what failed and what to do), 2 usage error,
// 3 a partial capture (the target exited during it; the bundle is kept and says so) without
// --allow-partial.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "capture/process/process_capture.h"
#include "capture/process/proc_maps.h"
#include "capture/process/procfs.h"
#include "upload/spool.h"
#include "upload/uploader.h"
#include "mlfx/base/progress.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/version.h"
#include "mlfx/bundle/sealing_keys.h"

namespace mlfx {
namespace {

int report_error(const Error& e) {
  std::fprintf(stderr, "mlfx-agent: error: %s\n", e.to_string().c_str());
  return 1;
}

constexpr int kExitPartialCapture = 3;

// The spool, with what it did on opening (torn captures removed or queued) told to the operator.
Result<agent::Spool> open_spool(const std::string& dir, std::optional<uint64_t> quota = std::nullopt) {
  auto spool = agent::Spool::open(dir, quota);
  if (spool)
    for (const auto& n : spool->notices()) std::fprintf(stderr, "mlfx-agent: spool: %s\n", n.c_str());
  return spool;
}

// Ctrl-C, SIGTERM or SIGHUP during a capture: stop at the next block, release the target and
// remove the incomplete bundle, instead of dying with a partial file on disk.
std::atomic<bool> g_interrupted{false};

void on_signal(int) { g_interrupted = true; }

void catch_interrupts() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
}

struct CaptureArgs {
  pid_t pid = 0;
  std::string out, spool, device_key, source = "process", case_id, note, device_id;
  std::vector<std::string> recipients;
  uint64_t buffer_bytes = 0;  // 0: a quarter of MemAvailable
  std::optional<uint64_t> spool_quota;
  bool quiet = false;
  bool allow_partial = false;  // a target that exits during the capture is not a failure
};

// The bundle grows to about the target's readable memory: refuse before freezing anything
// when the spool has no room for that.
Status check_spool_room(const agent::Spool& spool, pid_t pid) {
  MLFX_ASSIGN(auto maps, agent::process::read_proc_maps(pid));
  uint64_t estimate = 0;
  for (const auto& m : maps)
    if (m.readable()) estimate += m.size();
  return spool.check_room(estimate);
}

// Memory for read-but-not-yet-sealed chunks: with room for the whole image the target is
// frozen only while its memory is read; a quarter of what the kernel can spare by default.
Result<uint64_t> capture_buffer_bytes(const CaptureArgs& a) {
  if (a.buffer_bytes) return a.buffer_bytes;
  MLFX_ASSIGN(uint64_t available, agent::process::mem_available_bytes());
  return available / 4;
}

// `final_path` receives where the bundle ended up: --out, or its name in the spool's queue.
Result<agent::process::BundleCaptureResult> capture(const CaptureArgs& a, std::string* final_path) {
  // Keys first: a typo fails before anything is created or frozen.
  MLFX_ASSIGN(bundle::SealingKeys keys, bundle::load_sealing_keys(a.device_key, a.recipients));
  bundle::SealParams p;
  p.case_id = a.case_id;
  p.note = a.note;
  p.device_id = a.device_id;
  p.command = "agent capture";
  MLFX_ASSIGN(p.buffer_bytes, capture_buffer_bytes(a));
  p.cancel = &g_interrupted;  // also after the thaw, while sealing finishes
  p.tool_parameters = {{"pid", a.pid}, {"source", a.source}, {"recipients", a.recipients},
                       {"case_id", a.case_id}, {"chunk_size", p.chunk_size},
                       {"buffer_bytes", p.buffer_bytes}};
  std::optional<agent::Spool> spool;
  std::optional<agent::IncomingFile> incoming;  // in the spool: written locked, then queued
  File out;
  if (!a.spool.empty()) {
    MLFX_ASSIGN(spool, open_spool(a.spool, a.spool_quota));
    MLFX_TRY(check_spool_room(*spool, a.pid));
    MLFX_ASSIGN(incoming, spool->create_incoming("capture-" + std::to_string(a.pid) + "-" +
                                                 std::to_string(getpid()) + ".mlfx"));
    out = std::move(incoming->file);
  } else {
    MLFX_ASSIGN(out, File::create_new(a.out, 0640));
  }
  // From here on a failure removes the incomplete bundle.
  struct Cleanup {
    std::optional<agent::Spool>& spool;
    std::optional<agent::IncomingFile>& incoming;
    std::string path;
    bool keep = false;
    ~Cleanup() {
      if (keep) return;
      if (incoming) spool->discard_incoming(*incoming);
      else unlink(path.c_str());
    }
  } cleanup{spool, incoming, a.out};
  agent::process::ProcessCaptureOptions opt;
  opt.pid = a.pid;
  opt.cancel = &g_interrupted;
  auto r = agent::process::capture_process_to_bundle(opt, std::move(out), *keys.device.signing,
                                                     keys.recipients, std::move(p), !a.quiet);
  if (!r) return fail(std::move(r).error().context("capturing pid " + std::to_string(a.pid)));
  if (spool) {
    MLFX_ASSIGN(agent::SpoolEntry e, spool->add_incoming(*incoming));
    *final_path = e.path;
  } else {
    *final_path = a.out;
  }
  cleanup.keep = true;
  return r;
}

// A target that exited (killed, crashed) while its memory was read: the bundle is sealed and
// kept, since nothing else of that process is left, and says in its context and custody that
// it is partial. Without --allow-partial that is not a success.
int report_partial(const CaptureArgs& a, const json::Json& c, const std::string& path) {
  const json::Json& exit = c["target_exit"];
  std::fprintf(stderr,
               "mlfx-agent: capture: PARTIAL CAPTURE: %s; %s of the %s core could not be read and are zeros "
               "(from address 0x%llx on). The bundle %s is kept and marked partial: context \"complete\": "
               "false with \"target_exit\", and the same in its custody 'acquired' event.\n",
               exit["how"].get<std::string>().c_str(),
               human_bytes(exit["bytes_not_read"].get<double>()).c_str(),
               human_bytes(c["bytes"]["core"].get<double>()).c_str(),
               static_cast<unsigned long long>(exit["at_address"].get<uint64_t>()), path.c_str());
  if (a.allow_partial) return 0;
  std::fprintf(stderr, "mlfx-agent: capture: pid %d exited during the capture; exit status %d "
                       "(pass --allow-partial to accept a partial capture)\n",
               a.pid, kExitPartialCapture);
  return kExitPartialCapture;
}

int run_capture(const CaptureArgs& a) {
  if (a.quiet) Progress::set_enabled(false);
  catch_interrupts();
  std::string path;
  auto r = capture(a, &path);
  if (!r) return report_error(r.error());
  const json::Json& c = r->context;
  const json::Json& t = c["timings"];
  std::printf("captured pid %d (%s): %zu threads, %zu mappings, %s read in %.0f ms, frozen %.0f ms, "
              "sealed %.0f ms after the thaw\n",
              a.pid, c["process"]["comm"].get<std::string>().c_str(), c["threads"].size(),
              c["mappings"].size(), human_bytes(c["bytes"]["read"].get<double>()).c_str(),
              t["capture_ms"].get<double>(), t["frozen_ms"].get<double>(),
              t["sealed_after_thaw_ms"].get<double>());
  if (!c["unreadable"].empty())
    std::printf("  %zu range(s) not read (zero-filled or left out; listed in the context stream), "
                "%s zero-filled\n",
                c["unreadable"].size(), human_bytes(c["bytes"]["zero_filled"].get<double>()).c_str());
  std::printf("sealed %s: bundle %s%s\n", path.c_str(), r->manifest.bundle_id_hex().c_str(),
              c["complete"].get<bool>() ? "" : " (PARTIAL: the target exited during the capture)");
  for (const auto& s : r->manifest.streams)
    std::printf("  %-10s %14llu bytes  sha256 %s\n", s.name.c_str(),
                static_cast<unsigned long long>(s.size), s.sha256.c_str());
  std::fflush(stdout);
  if (!c["complete"].get<bool>()) return report_partial(a, c, path);
  return 0;
}

// ---- spool, ship, status ----

struct SpoolArgs {
  std::string dir;
  std::vector<std::string> files;
  std::optional<uint64_t> quota;
  bool json = false;
};

int run_spool_add(const SpoolArgs& a) {
  auto spool = open_spool(a.dir, a.quota);
  if (!spool) return report_error(spool.error());
  for (const auto& f : a.files) {
    auto e = spool->add(f);
    if (!e) return report_error(std::move(e).error().context("queueing " + f));
    std::printf("queued %s as %s (%s, digest %s)\n", f.c_str(), e->name.c_str(),
                human_bytes(double(e->file_size)).c_str(), e->bundle_digest.c_str());
  }
  return 0;
}

int run_status(const SpoolArgs& a) {
  auto spool = open_spool(a.dir);
  if (!spool) return report_error(spool.error());
  auto queue = spool->queue();
  auto rejected = spool->rejected();
  auto used = spool->used_bytes();
  auto receipts = spool->receipt_count();
  if (!queue || !rejected || !used || !receipts)
    return report_error(!queue ? queue.error() : !rejected ? rejected.error() : !used ? used.error() : receipts.error());
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

struct ShipArgs {
  std::string spool, server, ca, crl, cert, key, intake_key;
  uint64_t bandwidth = 0;
  double timeout_s = 60, backoff_min_s = 1, backoff_max_s = 300, poll_s = 5;
  bool once = false, until_empty = false, json = false;
};

Result<agent::IntakeTarget> ship_target(const ShipArgs& a) {
  agent::IntakeTarget t;
  const size_t colon = a.server.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.server.size())
    return fail(Errc::kInvalidArgument, "--server wants HOST:PORT, not '" + a.server + "'");
  t.host = a.server.substr(0, colon);
  char* end = nullptr;
  unsigned long port = std::strtoul(a.server.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port == 0 || port > 65535)
    return fail(Errc::kInvalidArgument, "--server: '" + a.server.substr(colon + 1) + "' is not a port");
  t.port = static_cast<uint16_t>(port);
  t.tls = {a.ca, a.cert, a.key, a.crl};
  if (!a.intake_key.empty()) {
    if (a.intake_key.rfind("sha256:", 0) == 0) {
      t.intake_key_fingerprint = a.intake_key;
    } else {
      MLFX_ASSIGN(crypto::PublicKeyFile pub, crypto::load_public_key_file(a.intake_key));
      if (!pub.verify) return fail(Errc::kInvalidArgument, a.intake_key + " holds no signing key");
      t.intake_key_fingerprint = pub.verify->fingerprint();
    }
  }
  t.bandwidth = a.bandwidth;
  t.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  return t;
}

void print_upload(const agent::UploadOutcome& u, bool as_json) {
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
  if (!target) return report_error(target.error());
  if (a.crl.empty())
    std::fprintf(stderr, "mlfx-agent: ship: warning: no --crl: the intake's certificate is not checked for "
                         "revocation (CRL not checked)\n");
  auto spool = open_spool(a.spool);
  if (!spool) return report_error(spool.error());
  // One shipper per spool: a second would upload the same bundles twice over.
  auto lock = spool->lock_shipping();
  if (!lock) return report_error(lock.error());
  bool any_rejected = false;
  auto on_upload = [&](const agent::UploadOutcome& u) {
    any_rejected |= u.result == "rejected";
    print_upload(u, a.json);
  };
  unsigned failures = 0;
  const auto base = std::chrono::milliseconds(static_cast<int64_t>(a.backoff_min_s * 1000));
  const auto cap = std::chrono::milliseconds(static_cast<int64_t>(a.backoff_max_s * 1000));
  for (;;) {
    agent::PassReport pass = agent::ship_pass(*spool, *target, on_upload);
    auto left = spool->queue();
    if (!left) return report_error(left.error());
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
      wait = agent::backoff_delay(failures++, base, cap);
      if (!a.json) std::fprintf(stderr, "mlfx-agent: ship: retrying in %.1f s\n", double(wait.count()) / 1000);
    }
    std::this_thread::sleep_for(wait);
  }
}

}  // namespace
}  // namespace mlfx

int main(int argc, char** argv) {
  using namespace mlfx;
  // First thing: this process will hold the device's private key and the target's plaintext
  // memory; no core dump of it, and no other process of this user may read or trace it.
  if (auto st = protect_process(); !st) {
    std::fprintf(stderr, "mlfx-agent: error: cannot protect this process's memory: %s\n",
                 st.error().to_string().c_str());
    return 1;
  }
  CLI::App app{"mlfx-agent: capture the memory of ML processes as sealed evidence"};
  app.set_version_flag("--version", std::string("mlfx-agent ") + kToolVersion);
  app.require_subcommand(1);

  CaptureArgs ca;
  auto* cap = app.add_subcommand("capture", "freeze a process, capture its memory as an ELF core "
                                            "sealed into a new bundle, and let it run on");
  cap->add_option("--pid", ca.pid, "process to capture")->required()->check(CLI::PositiveNumber);
  cap->add_option("--out", ca.out, "bundle to create (must not exist)");
  cap->add_option("--device-key", ca.device_key, "device private key that signs")->required();
  cap->add_option("--recipient", ca.recipients, "lab public key to encrypt to (repeatable)")->required();
  cap->add_option("--source", ca.source, "capture backend (process: ptrace + /proc/PID/mem)")
      ->check(CLI::IsMember({"process"}));
  cap->add_option("--case", ca.case_id, "case identifier");
  cap->add_option("--note", ca.note, "operator note");
  cap->add_option("--device-id", ca.device_id, "device name recorded in the manifest (default: host name)");
  cap->add_option("--buffer", ca.buffer_bytes,
                  "memory for captured chunks awaiting sealing, e.g. 2G (default: a quarter of "
                  "MemAvailable); the target is frozen longer when its memory does not fit")
      ->transform(CLI::AsSizeValue(false));
  cap->add_flag("-q,--quiet", ca.quiet, "no progress bar");
  cap->add_flag("--allow-partial", ca.allow_partial,
                "exit 0 when the target exits during the capture (the bundle is kept and marked partial "
                "either way; without this flag the exit status is 3)");

  auto* opt_out = cap->get_option("--out");
  auto* opt_spool = cap->add_option("--spool", ca.spool, "queue the bundle in this spool directory for 'ship' "
                                                         "instead of writing --out");
  cap->add_option("--spool-quota", ca.spool_quota, "spool disk quota, e.g. 20G (kept for later runs)")
      ->transform(CLI::AsSizeValue(false))->needs(opt_spool);
  opt_out->excludes(opt_spool);

  SpoolArgs sp;
  auto* spool_cmd = app.add_subcommand("spool", "manage the spool of bundles waiting to be shipped")->require_subcommand(1);
  auto* spool_add = spool_cmd->add_subcommand("add", "queue sealed bundles for shipping (copied; the files stay)");
  spool_add->add_option("--spool", sp.dir, "spool directory (created when missing)")->required();
  spool_add->add_option("files", sp.files, "bundles to queue")->required();
  spool_add->add_option("--quota", sp.quota, "spool disk quota, e.g. 20G (kept for later runs)")
      ->transform(CLI::AsSizeValue(false));

  auto* status = app.add_subcommand("status", "show the spool: queued, rejected and shipped bundles");
  status->add_option("--spool", sp.dir, "spool directory")->required();
  status->add_flag("--json", sp.json, "print as JSON");

  ShipArgs sh;
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (cap->parsed()) {
    if (ca.out.empty() && ca.spool.empty()) {
      std::fprintf(stderr, "mlfx-agent capture: give --out FILE or --spool DIR\n");
      return 2;
    }
    return run_capture(ca);
  }
  if (spool_add->parsed()) return run_spool_add(sp);
  if (status->parsed()) return run_status(sp);
  if (ship->parsed()) return run_ship(sh);
  return 2;
}
