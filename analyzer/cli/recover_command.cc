// mlfx recover: every model in a captured process (ELF core or bundle) or a live one (--pid).
#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "evidence/bundle_check.h"
#include "mlfx/base/json.h"
#include "mlfx/base/printable.h"
#include "recovery/recover.h"

namespace mlfx::cli {
namespace {

int run_recover(const recovery::RecoverOptions& o, bool json_out) {
  auto r = recovery::recover(o);
  if (!r) return report_error("recover", r.error());
  if (r->identity_unverified)
    std::fprintf(stderr, "mlfx recover: warning: %s: the bundle is intact but its signer's identity is unverified "
                         "(no --trusted-devices); see input.verification in report.json\n",
                 evidence::verdict_words(evidence::Verdict::kIdentityUnverified));
  if (r->capture_incomplete) std::fprintf(stderr, "mlfx recover: warning: %s\n", printable(*r->capture_incomplete).c_str());
  const int done = r->models.empty() ? kExitNoModels : r->limit_exhausted ? kExitPartial : 0;
  if (json_out) {
    std::cout << printable_json(r->report, 2) << "\n";
    return done;
  }
  const auto print_process = [](const recovery::RecoverResult& p, const std::string& dir) {
    std::printf("process %s (pid %d), CPython %s, %llu tracked objects, %llu modules\n", printable(p.command).c_str(),
                p.pid, printable(p.python_version).c_str(), static_cast<unsigned long long>(p.gc_objects),
                static_cast<unsigned long long>(p.torch_modules));
    for (const auto& m : p.models)
      std::printf("  %-28s %-40s %6llu tensors %12llu parameters%s\n", printable(dir + m.directory).c_str(),
                  printable(m.class_name).c_str(), static_cast<unsigned long long>(m.tensors),
                  static_cast<unsigned long long>(m.parameters), m.complete ? "" : "  INCOMPLETE");
    for (const auto& f : p.findings)
      std::printf("finding (%s): %s\n", printable(f.severity).c_str(), printable(f.summary).c_str());
  };
  if (r->processes.empty()) print_process(*r, "");
  for (const auto& p : r->processes)  // a whole-memory capture: each process in its directory
    print_process(p, "processes/" + std::to_string(p.pid) + "/");
  if (r->warnings) std::printf("%zu diagnostic(s): see %s/report.json\n", r->warnings, o.out_dir.c_str());
  if (r->limit_exhausted)
    std::fprintf(stderr, "mlfx recover: analysis stopped early: %s; the results are partial (rerun with a larger "
                         "--memory-limit or --time-limit to go further)\n",
                 printable(*r->limit_exhausted).c_str());
  std::printf("wrote %s/report.json\n", o.out_dir.c_str());
  if (r->models.empty())
    std::fprintf(stderr, "mlfx recover: no model found: %s\n",
                 r->torch_loaded ? "torch is loaded but no nn.Module is alive in this process"
                                 : "torch is not imported in this process");
  return done;
}

}  // namespace

void add_recover_command(CLI::App& app, Registry& registry) {
  struct Args {
    recovery::RecoverOptions options;
    bool json = false, quiet = false;
    uint64_t memory_mib = 0;
  };
  auto args = std::make_shared<Args>();
  recovery::RecoverOptions& ro = args->options;
  bool& recover_json = args->json;
  bool& recover_quiet = args->quiet;
  auto* recover = app.add_subcommand("recover", "recover every model in a captured process (ELF core or bundle) "
                                                "or in a live one (--pid)");
  auto* recover_source = recover->add_option_group("source", "what to recover from: an input, --pid, or both");
  recover_source->add_option("input", ro.input,
                             "ELF core, mlfx bundle with a 'core' stream, or a whole-memory bundle "
                             "(mlfx-agent capture --source lime|kmod)");
  recover_source->add_option("--pid", ro.pid,
                             "without an input: a live process, frozen while its memory is read into an in-memory "
                             "core, then released and analysed; with a whole-memory bundle: the process in it to "
                             "recover (default: every process captured with --pid)")
      ->check(CLI::PositiveNumber);
  recover_source->require_option(1, 2);
  recover->add_option("--out", ro.out_dir, "output directory (new or empty)")->required();
  recover->add_option("--key", ro.lab_key, "lab private key (for bundles)");
  recover->add_option("--trusted-devices", ro.trusted_devices_dir, kTrustedDevicesHelp);
  recover->add_option("--sysroot", ro.sysroot,
                      "read file-backed memory the core left out (gcore and kernel cores skip read-only "
                      "file data) from DIR + the mapped path, like gdb's sysroot; '/' on the captured host");
  recover->add_option("--gpu-core", ro.gpu_core,
                      "a CUDA GPU core dump of the same process (the driver's or cuda-gdb's, raw or gzip) beside an "
                      "ELF core: its CUDA tensors are read from it; a bundle brings its own");
  recover->add_flag("--json", recover_json, "print the report as JSON");
  recover->add_flag("-q,--quiet", recover_quiet, "no progress bar");
  uint64_t& recover_memory_mib = args->memory_mib;
  recover_memory_mib = ro.limits.memory_bytes >> 20;
  recover->add_option("--memory-limit", recover_memory_mib,
                      "MiB the analysis may keep (decoded names, modules, walks; not the image nor the "
                      "exported tensors); past it recovery stops with partial results, exit 4")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{16}, uint64_t{1} << 30));
  recover->add_option("--time-limit", ro.limits.seconds,
                      "seconds the analysis may take; past them recovery stops with partial results, exit 4")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  registry.add(recover, [args] {
    args->options.limits.memory_bytes = args->memory_mib << 20;
    args->options.show_progress = !args->quiet && !args->json;
    return run_recover(args->options, args->json);
  });
}

}  // namespace mlfx::cli
