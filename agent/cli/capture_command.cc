// mlfx-agent capture: freeze a process, capture its memory as an ELF core sealed into a new
// bundle (or the spool), and let it run on; or, with --source lime or kmod, the machine's whole
// physical memory (capture/physical/), the --pid processes frozen and recorded meanwhile.
// With --source gpu,process the target's CUDA GPU core dump is read first (capture/gpu/), then
// its memory, into one bundle. mlfx-agent gpu-env: the variables that arm a CUDA target.
// mlfx-agent core: a process's core, plain, for triage.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "capture/capture.h"
#include "capture/spooled_capture.h"
#include "capture/gpu/cuda_arming.h"
#include "capture/gpu/cuda_coredump_source.h"
#include "capture/physical/kmod_source.h"
#include "capture/physical/lime_source.h"
#include "capture/process/process_capture.h"
#include "capture/process/process_source.h"
#include "capture/process/proc_maps.h"
#include "capture/process/procfs.h"
#include "cli/command.h"
#include "mlfx/base/file.h"
#include "mlfx/base/progress.h"
#include "mlfx/bundle/sealing_keys.h"

namespace mlfx::agent::cli {
namespace {

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
  std::vector<pid_t> pids;  // process: exactly one; lime, kmod: any number
  std::string out, spool, device_key, source = "process", case_id, note, device_id, module;
  std::string gpu_dir = gpu::kDefaultGpuDir, nvidia_proc = "/proc/driver/nvidia";
  uint32_t gpu_timeout = 60;  // seconds without data (and before the first byte)
  std::vector<std::string> recipients;
  uint64_t buffer_bytes = 0;  // 0: a quarter of MemAvailable
  std::optional<uint64_t> spool_quota;
  bool quiet = false;
  bool allow_partial = false;  // a target that exits during the capture is not a failure
};

bool physical(const CaptureArgs& a) { return a.source == "lime" || a.source == "kmod"; }
bool with_gpu(const CaptureArgs& a) { return a.source == "gpu" || a.source == "gpu,process"; }
bool with_process(const CaptureArgs& a) { return a.source == "process" || a.source == "gpu,process"; }

// --source spellings: one backend, or "gpu,process" in either order (the GPU is read first).
std::string normalized_source(const std::string& s) { return s == "process,gpu" ? "gpu,process" : s; }

// Memory for read-but-not-yet-sealed chunks: with room for the whole image the target is
// frozen only while its memory is read; a quarter of what the kernel can spare by default.
// A whole-memory capture cannot hold RAM in RAM, and every buffer page it takes overwrites
// free memory that is evidence too: 64 MiB, the module or LiME waits for the sealer.
Result<uint64_t> capture_buffer_bytes(const CaptureArgs& a) {
  if (a.buffer_bytes) return a.buffer_bytes;
  if (physical(a)) return uint64_t{64} << 20;
  MLFX_ASSIGN(uint64_t available, process::mem_available_bytes());
  return available / 4;
}

// The sources, checked before any output exists or anything is frozen or loaded: the GPU first.
Result<std::vector<std::unique_ptr<CaptureSource>>> make_sources(const CaptureArgs& a) {
  std::vector<std::unique_ptr<CaptureSource>> sources;
  if (with_gpu(a)) {
    gpu::GpuCaptureOptions opt;
    opt.pid = a.pids.front();
    opt.dir = a.gpu_dir;
    opt.nvidia_proc = a.nvidia_proc;
    opt.first_byte_timeout = opt.idle_timeout = std::chrono::seconds(a.gpu_timeout);
    opt.cancel = &g_interrupted;
    auto s = gpu::CudaCoredumpSource::create(std::move(opt));
    if (!s && gpu::CudaCoredumpSource::not_armed(s.error()))
      return fail(std::move(s).error().context("--source " + a.source + " (arm CUDA targets at their start with the "
                                                                        "variables 'mlfx-agent gpu-env' prints)"));
    if (!s) return fail(std::move(s).error());
    sources.push_back(std::move(*s));
  }
  if (with_process(a)) {
    process::ProcessCaptureOptions opt;
    opt.pid = a.pids.front();
    opt.cancel = &g_interrupted;
    sources.push_back(std::make_unique<process::ProcessSource>(opt));
  }
  if (!physical(a)) return sources;
  physical::PhysicalOptions opt;
  opt.module_path = a.module;
  opt.pids = a.pids;
  opt.cancel = &g_interrupted;
  if (a.source == "lime") {
    MLFX_ASSIGN(auto s, physical::LimeSource::create(std::move(opt)));
    sources.push_back(std::move(s));
  } else {
    MLFX_ASSIGN(auto s, physical::KmodSource::create(std::move(opt)));
    sources.push_back(std::move(s));
  }
  return sources;
}

std::string pids_text(const std::vector<pid_t>& pids) {
  std::string t;
  for (pid_t p : pids) t += (t.empty() ? "" : ",") + std::to_string(p);
  return t;
}

std::string what_was_captured(const CaptureArgs& a) {
  return physical(a) ? "capturing physical memory (" + a.source + ")" : "capturing pid " + std::to_string(a.pids.front());
}

// `final_path` receives where the bundle ended up: --out, or its name in the spool's queue.
Result<CaptureOutcome> capture(const CaptureArgs& a, std::string* final_path) {
  // Keys first: a typo fails before anything is created or frozen.
  MLFX_ASSIGN(bundle::SealingKeys keys, bundle::load_sealing_keys(a.device_key, a.recipients));
  bundle::SealParams p;
  p.case_id = a.case_id;
  p.note = a.note;
  p.device_id = a.device_id;
  p.command = "agent capture";
  MLFX_ASSIGN(p.buffer_bytes, capture_buffer_bytes(a));
  p.cancel = &g_interrupted;  // also after the thaw, while sealing finishes
  p.tool_parameters = {{"source", a.source}, {"recipients", a.recipients},
                       {"case_id", a.case_id}, {"chunk_size", p.chunk_size},
                       {"buffer_bytes", p.buffer_bytes}};
  if (physical(a)) {
    p.tool_parameters["pids"] = a.pids;
    p.tool_parameters["module"] = a.module;
  } else {
    p.tool_parameters["pid"] = a.pids.front();
  }
  if (with_gpu(a)) p.tool_parameters["gpu_dir"] = a.gpu_dir;
  MLFX_ASSIGN(std::vector<std::unique_ptr<CaptureSource>> owned, make_sources(a));
  std::vector<CaptureSource*> sources;
  for (auto& s : owned) sources.push_back(s.get());
  if (!a.spool.empty()) {
    MLFX_ASSIGN(Spool spool, open_spool(a.spool, a.spool_quota));
    const std::string what = physical(a) ? a.source : std::to_string(a.pids.front());
    auto r = capture_into_spool(spool, "capture-" + what + "-" + std::to_string(getpid()) + ".mlfx", sources,
                                keys, std::move(p), !a.quiet);
    if (!r) return fail(std::move(r).error().context(what_was_captured(a)));
    *final_path = r->entry.path;
    return std::move(r->outcome);
  }
  MLFX_ASSIGN(File out, File::create_new(a.out, 0640));
  Rollback incomplete = remove_unless_committed(a.out);
  auto r = capture_to_bundle(sources, std::move(out), *keys.device.signing, keys.recipients, std::move(p), !a.quiet);
  if (!r) return fail(std::move(r).error().context(what_was_captured(a)));
  *final_path = a.out;
  incomplete.commit();
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
               a.pids.front(), kExitPartialCapture);
  return kExitPartialCapture;
}

void print_streams(const CaptureOutcome& r) {
  for (const auto& s : r.manifest.streams)
    std::printf("  %-10s %14llu bytes  sha256 %s\n", s.name.c_str(),
                static_cast<unsigned long long>(s.size), s.sha256.c_str());
}

// A whole-memory capture: what the image holds, what it lacks, and LiME's digest.
int report_physical(const CaptureArgs& a, const CaptureOutcome& r, const std::string& path) {
  const json::Json& c = r.contexts.front();
  const json::Json& t = c["timings"];
  std::printf("captured physical memory with %s: %s of %s System RAM in %zu range(s), read in %llu ms",
              a.source.c_str(), human_bytes(c["image"]["data_bytes"].get<double>()).c_str(),
              human_bytes(c["image"]["system_ram_bytes"].get<double>()).c_str(), c["ranges"].size(),
              static_cast<unsigned long long>(t["capture_ms"].get<uint64_t>()));
  if (!a.pids.empty())
    std::printf("; pid %s frozen %llu ms", pids_text(a.pids).c_str(),
                static_cast<unsigned long long>(t["frozen_ms"].get<uint64_t>()));
  std::printf("\n");
  if (!c["unreadable"].empty()) {
    std::printf("  %zu range(s) of System RAM not in the image (listed in the context with the reason):\n",
                c["unreadable"].size());
    size_t shown = 0;
    for (const auto& u : c["unreadable"]) {
      if (++shown > 5) break;
      std::printf("    %s-%s: %s\n", hex_address(u["start"].get<uint64_t>()).c_str(),
                  hex_address(u["end"].get<uint64_t>()).c_str(), u["reason"].get<std::string>().c_str());
    }
  }
  if (!c["zero_filled"].empty())
    std::printf("  %zu partial page(s) written as zeros by %s (listed in the context)\n", c["zero_filled"].size(),
                a.source.c_str());
  const json::Json& khugepaged = c["smear_reduction"]["khugepaged"];
  if (khugepaged.value("restored", false))
    std::printf("  khugepaged was paused while the image was read (transparent_hugepage %s -> never -> %s)\n",
                khugepaged["was"].get<std::string>().c_str(), khugepaged["was"].get<std::string>().c_str());
  if (khugepaged.contains("restore_error"))
    std::fprintf(stderr, "mlfx-agent: capture: warning: transparent_hugepage stays 'never': %s; restore it with: "
                         "echo %s > %s\n",
                 khugepaged["restore_error"].get<std::string>().c_str(), khugepaged["was"].get<std::string>().c_str(),
                 khugepaged["setting"].get<std::string>().c_str());
  bool digest_ok = true;
  if (c.contains("digest") && c["digest"].contains("tool_sha256")) {
    const json::Json& d = c["digest"];
    digest_ok = d["match"].get<bool>();
    if (digest_ok)
      std::printf("  LiME's own SHA-256 matches the agent's: %s\n", d["sha256"].get<std::string>().c_str());
  }
  std::printf("sealed %s: bundle %s\n", path.c_str(), r.manifest.bundle_id_hex().c_str());
  print_streams(r);
  std::fflush(stdout);
  if (!digest_ok) {
    const json::Json& d = c["digest"];
    std::fprintf(stderr,
                 "mlfx-agent: capture: LiME's digest %s does not match the SHA-256 of what the agent received, %s. "
                 "The bundle %s is kept and records both (context \"digest\"); exit status %d\n",
                 d["tool_sha256"].is_string() ? d["tool_sha256"].get<std::string>().c_str() : "(none: LiME gave none)",
                 d["sha256"].get<std::string>().c_str(), path.c_str(), kExitPartialCapture);
    return kExitPartialCapture;
  }
  return 0;
}

// The GPU core dump: its size, how it was made, and that the target lived through it.
void report_gpu(const CaptureArgs& a, const json::Json& c) {
  std::printf("captured the GPU core dump of pid %d (%s): %s in %.0f ms (first byte after %.0f ms), the target "
              "survived%s\n",
              a.pids.front(), c["method"].get<std::string>().c_str(),
              human_bytes(c["dump"]["bytes"].get<double>()).c_str(), c["timings"]["trigger_to_eof_ms"].get<double>(),
              c["timings"]["trigger_to_first_byte_ms"].get<double>(),
              c["driver"]["available"].get<bool>() ? "" : " (no NVIDIA driver facts: /proc/driver/nvidia is missing)");
}

int run_capture(const CaptureArgs& a) {
  if (a.quiet) Progress::set_enabled(false);
  catch_interrupts();
  std::string path;
  auto r = capture(a, &path);
  if (!r) return report_error("capture", r.error());
  if (physical(a)) return report_physical(a, *r, path);
  if (with_gpu(a)) report_gpu(a, r->contexts.front());
  if (!with_process(a)) {
    std::printf("sealed %s: bundle %s\n", path.c_str(), r->manifest.bundle_id_hex().c_str());
    print_streams(*r);
    return 0;
  }
  const json::Json& c = r->contexts.back();  // the process source
  const json::Json& t = c["timings"];
  std::printf("captured pid %d (%s): %zu threads, %zu mappings, %s read in %.0f ms, frozen %.0f ms, "
              "sealed %.0f ms after the thaw\n",
              a.pids.front(), c["process"]["comm"].get<std::string>().c_str(), c["threads"].size(),
              c["mappings"].size(), human_bytes(c["bytes"]["read"].get<double>()).c_str(),
              t["capture_ms"].get<double>(), t["frozen_ms"].get<double>(),
              t["sealed_after_thaw_ms"].get<double>());
  if (!c["unreadable"].empty())
    std::printf("  %zu range(s) not read (zero-filled or left out; listed in the context stream), "
                "%s zero-filled\n",
                c["unreadable"].size(), human_bytes(c["bytes"]["zero_filled"].get<double>()).c_str());
  std::printf("sealed %s: bundle %s%s\n", path.c_str(), r->manifest.bundle_id_hex().c_str(),
              c["complete"].get<bool>() ? "" : " (PARTIAL: the target exited during the capture)");
  print_streams(*r);
  std::fflush(stdout);
  if (!c["complete"].get<bool>()) return report_partial(a, c, path);
  return 0;
}

// ---- core: a plain ELF core for triage on the host (mlfx recover --pid runs this) ----

struct CoreArgs {
  pid_t pid = 0;
  std::string out, context;
};

int run_core(const CoreArgs& a) {
  catch_interrupts();
  auto out = open_output(a.out, 0600);
  if (!out) return report_error("core", out.error());
  if (a.out == "-" && isatty(STDOUT_FILENO)) {
    std::fprintf(stderr, "mlfx-agent core: standard output is a terminal; redirect it or give --out FILE\n");
    return kExitUsage;
  }
  Rollback incomplete = a.out == "-" || a.out.rfind("/dev/fd/", 0) == 0 ? Rollback(nullptr) : remove_unless_committed(a.out);
  process::ProcessCaptureOptions opt;
  opt.pid = a.pid;
  opt.cancel = &g_interrupted;
  auto context = process::capture_process_core(opt, *out);
  if (!context) return report_error("core", std::move(context).error().context("capturing pid " + std::to_string(a.pid)));
  if (auto st = out->close(); !st) return report_error("core", st.error());
  if (!a.context.empty()) {
    auto f = open_output(a.context, 0600);
    if (!f) return report_error("core", f.error());
    if (auto st = f->write_all(as_bytes(context->dump())); !st) return report_error("core", st.error());
  }
  incomplete.commit();
  return 0;
}

}  // namespace

void add_capture_commands(CLI::App& app, Registry& registry) {
  auto args = std::make_shared<CaptureArgs>();
  CaptureArgs& ca = *args;
  auto* cap = app.add_subcommand("capture", "freeze a process, capture its memory as an ELF core "
                                            "sealed into a new bundle, and let it run on; or with --source "
                                            "lime|kmod the whole physical memory");
  cap->add_option("--pid", ca.pids, "process to capture (--source process: exactly one); with lime or kmod, "
                                    "processes frozen and recorded while the image is read (repeatable)")
      ->check(CLI::PositiveNumber);
  cap->add_option("--out", ca.out, "bundle to create (must not exist)");
  cap->add_option("--device-key", ca.device_key, "device private key that signs")->required();
  cap->add_option("--recipient", ca.recipients, "lab public key to encrypt to (repeatable)")->required();
  cap->add_option("--source", ca.source, "capture backend: process (ptrace + /proc/PID/mem), lime (stock "
                                         "LiME, whole memory), kmod (mlfx_mem.ko, whole memory), gpu (the CUDA GPU "
                                         "core dump of a target armed with 'mlfx-agent gpu-env', the CUPTI library's copy-out, or through cuda-gdb), "
                                         "gpu,process (both into one bundle, the GPU first)")
      ->transform([](std::string v) { return normalized_source(v); })
      ->check(CLI::IsMember({"process", "lime", "kmod", "gpu", "gpu,process"}));
  cap->add_option("--gpu-dir", ca.gpu_dir, std::string("--source gpu: the agent's directory the targets were armed "
                                                       "with (default ") + gpu::kDefaultGpuDir + ")");
  cap->add_option("--gpu-timeout", ca.gpu_timeout, "--source gpu: seconds to wait for the dump's first byte, and "
                                                   "for more data after it (default 60)")
      ->check(CLI::PositiveNumber);
  cap->add_option("--nvidia-proc", ca.nvidia_proc, "where the NVIDIA driver's /proc/driver/nvidia is (tests)")
      ->group("");
  cap->add_option("--module", ca.module, "--source lime or kmod: the module to load (default: the DKMS-installed "
                                         "lime.ko or mlfx_mem.ko under /lib/modules/$(uname -r)/updates/dkms)");
  cap->add_option("--case", ca.case_id, "case identifier");
  cap->add_option("--note", ca.note, "operator note");
  cap->add_option("--device-id", ca.device_id, "device name recorded in the manifest (default: host name)");
  cap->add_option("--buffer", ca.buffer_bytes,
                  "memory for captured chunks awaiting sealing, e.g. 2G (default: a quarter of "
                  "MemAvailable; 64M for lime and kmod); the target is frozen longer when its memory does not fit")
      ->transform(CLI::AsSizeValue(false));
  cap->add_flag("-q,--quiet", ca.quiet, "no progress bar");
  cap->add_flag("--allow-partial", ca.allow_partial,
                "exit 0 when the target exits during the capture (the bundle is kept and marked partial "
                "either way; without this flag the exit status is 3). With lime, exit status 3 also means "
                "LiME's digest did not match what the agent received (the bundle is kept and says so)");

  auto* opt_out = cap->get_option("--out");
  auto* opt_spool = cap->add_option("--spool", ca.spool, "queue the bundle in this spool directory for 'ship' "
                                                         "instead of writing --out");
  cap->add_option("--spool-quota", ca.spool_quota, "spool disk quota, e.g. 20G (kept for later runs)")
      ->transform(CLI::AsSizeValue(false))->needs(opt_spool);
  opt_out->excludes(opt_spool);

  auto core_args = std::make_shared<CoreArgs>();
  auto* core = app.add_subcommand("core", "freeze a process and write its memory as a plain ELF core (triage on "
                                          "this host; not evidence: unsealed, unsigned), then let it run on");
  core->add_option("--pid", core_args->pid, "process to capture")->required()->check(CLI::PositiveNumber);
  core->add_option("--out", core_args->out, "core file to create (must not exist), '-' for standard output, or "
                                            "/dev/fd/N for a descriptor this program was given")->required();
  core->add_option("--context", core_args->context, "also write the capture context (JSON: process, threads, "
                                                    "mappings, timings) here; same forms as --out");
  registry.add(core, [core_args] { return run_core(*core_args); });

  auto gpu_dir = std::make_shared<std::string>(gpu::kDefaultGpuDir);
  auto print_only = std::make_shared<bool>(false);
  auto* env = app.add_subcommand("gpu-env", "print the environment that arms a CUDA process for GPU core dumps "
                                            "the agent triggers (KEY=VALUE lines for a systemd unit's "
                                            "Environment= or a launcher), after making the agent's directory");
  env->add_option("--dir", *gpu_dir, std::string("the agent's directory for the pipes (default ") + gpu::kDefaultGpuDir + ")");
  env->add_flag("--print-only", *print_only, "do not make the directory (it must exist, mode 1733, when the target starts)");
  auto cupti = std::make_shared<std::string>();
  env->add_option("--cupti", *cupti, "also load the CUPTI library (libmlfx_cupti.so, an absolute path) into the target: "
                                     "its allocations tracked, copied out where the driver's dump is unavailable")
      ->check(CLI::ExistingFile);
  registry.add(env, [gpu_dir, print_only, cupti] {
    if (!cupti->empty() && (*cupti)[0] != '/') {
      std::fprintf(stderr, "mlfx-agent gpu-env: --cupti needs an absolute path (the driver loads it in the target's directory)\n");
      return kExitUsage;
    }
    if (!*print_only)
      if (auto st = gpu::ensure_gpu_dir(*gpu_dir); !st) return report_error("gpu-env", st.error());
    for (const auto& [key, value] : gpu::arming_environment(*gpu_dir, *cupti))
      std::printf("%s=%s\n", key.c_str(), value.c_str());
    return 0;
  });

  registry.add(cap, [args] {
    if (args->out.empty() && args->spool.empty()) {
      std::fprintf(stderr, "mlfx-agent capture: give --out FILE or --spool DIR\n");
      return kExitUsage;
    }
    if (!physical(*args) && args->pids.size() != 1) {
      std::fprintf(stderr, "mlfx-agent capture: --source %s captures one process: give --pid PID once\n",
                   args->source.c_str());
      return kExitUsage;
    }
    if (!physical(*args) && !args->module.empty()) {
      std::fprintf(stderr, "mlfx-agent capture: --module is for --source lime or kmod\n");
      return kExitUsage;
    }
    return run_capture(*args);
  });
}

}  // namespace mlfx::agent::cli
