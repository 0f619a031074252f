// mlfx-agent: the device-side command line. Only this file turns errors into exit codes:
// 0 success, 1 failure (the message says what failed and what to do), 2 usage error.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "capture/process/process_capture.h"
#include "capture/process/procfs.h"
#include "mlfx/base/version.h"
#include "mlfx/bundle/sealing_keys.h"

namespace mlfx {
namespace {

int report_error(const Error& e) {
  std::fprintf(stderr, "mlfx-agent: error: %s\n", e.to_string().c_str());
  return 1;
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
  std::string out, device_key, source = "process", case_id, note, device_id;
  std::vector<std::string> recipients;
  uint64_t buffer_bytes = 0;  // 0: a quarter of MemAvailable
  bool quiet = false;
};

// Memory for read-but-not-yet-sealed chunks: with room for the whole image the target is
// frozen only while its memory is read; a quarter of what the kernel can spare by default.
Result<uint64_t> capture_buffer_bytes(const CaptureArgs& a) {
  if (a.buffer_bytes) return a.buffer_bytes;
  MLFX_ASSIGN(uint64_t available, agent::process::mem_available_bytes());
  return available / 4;
}

Result<agent::process::BundleCaptureResult> capture(const CaptureArgs& a) {
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
  MLFX_ASSIGN(File out, File::create_new(a.out, 0640));
  // From here on a failure removes the incomplete bundle.
  struct Cleanup {
    std::string path;
    bool keep = false;
    ~Cleanup() {
      if (!keep) unlink(path.c_str());
    }
  } cleanup{a.out};
  agent::process::ProcessCaptureOptions opt;
  opt.pid = a.pid;
  opt.cancel = &g_interrupted;
  auto r = agent::process::capture_process_to_bundle(opt, std::move(out), *keys.device.signing,
                                                     keys.recipients, std::move(p), !a.quiet);
  if (!r) return fail(std::move(r).error().context("capturing pid " + std::to_string(a.pid)));
  cleanup.keep = true;
  return r;
}

int run_capture(const CaptureArgs& a) {
  if (a.quiet) Progress::set_enabled(false);
  catch_interrupts();
  auto r = capture(a);
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
  std::printf("sealed %s: bundle %s\n", a.out.c_str(), r->manifest.bundle_id_hex().c_str());
  for (const auto& s : r->manifest.streams)
    std::printf("  %-10s %14llu bytes  sha256 %s\n", s.name.c_str(),
                static_cast<unsigned long long>(s.size), s.sha256.c_str());
  return 0;
}

}  // namespace
}  // namespace mlfx

int main(int argc, char** argv) {
  using namespace mlfx;
  CLI::App app{"mlfx-agent: capture the memory of ML processes as sealed evidence"};
  app.set_version_flag("--version", std::string("mlfx-agent ") + kToolVersion);
  app.require_subcommand(1);

  CaptureArgs ca;
  auto* cap = app.add_subcommand("capture", "freeze a process, capture its memory as an ELF core "
                                            "sealed into a new bundle, and let it run on");
  cap->add_option("--pid", ca.pid, "process to capture")->required()->check(CLI::PositiveNumber);
  cap->add_option("--out", ca.out, "bundle to create (must not exist)")->required();
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (cap->parsed()) return run_capture(ca);
  return 2;
}
