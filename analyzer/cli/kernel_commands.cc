// mlfx ps, mlfx maps: the processes in a whole-memory bundle and a process's mappings, found
// by walking the kernel's own structures with the captured BTF and kallsyms (analyzer/kernel):
// no per-process context from the capture is needed.
#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "evidence/bundle_check.h"
#include "kernel/captured_kernel.h"
#include "kernel/listing.h"
#include "layers/file_layer.h"
#include "mlfx/base/file.h"
#include "mlfx/base/printable.h"
#include "physical/physical_image.h"

namespace mlfx::cli {
namespace {

constexpr size_t kMaxContext = size_t{256} << 20;

struct KernelArgs {
  std::string input, key, trusted;
  int32_t pid = 0;
  bool json = false, quiet = false;
};

// The bundle's image, context, kallsyms and BTF, decrypted from one verification, and the
// kernel found in them. Keeps the decrypted streams alive as long as the kernel is.
struct OpenKernel {
  evidence::DecryptedStreams streams;
  std::unique_ptr<kernel::KernelImage> kernel;
  std::string banner;
};

Result<std::string> read_stream(const evidence::DecryptedStreams& d, const std::string& input, const char* name,
                                size_t max, const char* why_missing) {
  const File* f = d.find(name);
  if (!f) return fail(Errc::kNotFound, input + " has no '" + name + "' stream (" + why_missing + ")");
  return read_small_file(f->path(), max);
}

Result<OpenKernel> open_kernel(const KernelArgs& a) {
  OpenKernel o;
  MLFX_ASSIGN(crypto::SecretKeyFile lab, crypto::load_secret_key_file(a.key));
  MLFX_ASSIGN(o.streams, evidence::decrypt_streams_to_memory(a.input, lab, {"memory", "context", "kallsyms", "btf"},
                                                             {a.trusted, !a.quiet && !a.json}));
  if (!o.streams.find("memory"))
    return fail(Errc::kBadFormat, a.input + " is not a whole-memory capture (no 'memory' stream); for a process "
                                            "capture use mlfx recover");
  MLFX_ASSIGN(std::string context, read_stream(o.streams, a.input, "context", kMaxContext, "it records the kernel banner"));
  MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> memory, layers::FileLayer::open(o.streams.find("memory")->path()));
  auto image = physical::PhysicalImage::open(std::move(memory), context, nullptr);
  if (!image) return fail(std::move(image).error().context(a.input));
  o.banner = image->context().banner;
  std::string why_not;
  auto k = kernel::open_captured_kernel(o.streams, *image, why_not);
  if (!k) return fail(std::move(k).error().context(a.input));
  if (!*k) return fail(Errc::kNotFound, a.input + ": " + why_not + "; use the captured pagemaps (mlfx recover)");
  o.kernel = std::move(*k);
  return o;
}

void print_warnings(const char* command, const json::Json& report) {
  for (const auto& w : report["warnings"]) std::fprintf(stderr, "mlfx %s: warning: %s\n", command, printable(w.get<std::string>()).c_str());
}

std::string count(const json::Json& pages, const char* key) {
  return pages.is_object() ? std::to_string(pages[key].get<uint64_t>()) : "-";
}

int run_ps(const KernelArgs& a) {
  auto o = open_kernel(a);
  if (!o) return report_error("ps", o.error());
  Diagnostics diag;
  const json::Json report = kernel::process_list(*o->kernel, diag);
  if (a.json) {
    std::cout << printable_json(report, 2) << "\n";
    return 0;
  }
  std::printf("%7s %7s %6s %4s %-16s %4s %9s %8s %9s\n", "PID", "PPID", "UID", "THR", "COMM", "MM", "PRESENT",
              "SWAPPED", "NOT-IN-IMG");
  for (const auto& p : report["processes"]) {
    const json::Json pages = p.value("pages", json::Json());
    std::printf("%7d %7d %6lld %4lld %-16s %4s %9s %8s %9s\n", p["pid"].get<int>(), p["ppid"].get<int>(),
                static_cast<long long>(p["uid"].get<int64_t>()), static_cast<long long>(p["threads"].get<int64_t>()),
                printable(p["comm"].get<std::string>()).c_str(), p["kernel_thread"].get<bool>() ? "-" : "yes",
                count(pages, "present").c_str(), count(pages, "swapped").c_str(), count(pages, "not_in_image").c_str());
  }
  std::printf("%zu processes; PRESENT, SWAPPED, NOT-IN-IMG: 4 KiB pages of each process's VMAs by its page tables "
              "(present pages whose frames the image lacks are NOT-IN-IMG)\n",
              report["processes"].size());
  print_warnings("ps", report);
  return 0;
}

int run_maps(const KernelArgs& a) {
  auto o = open_kernel(a);
  if (!o) return report_error("maps", o.error());
  Diagnostics diag;
  auto report = kernel::process_maps(*o->kernel, a.pid, diag);
  if (!report) return report_error("maps", report.error());
  if (a.json) {
    std::cout << printable_json(*report, 2) << "\n";
    return 0;
  }
  std::printf("pid %d (%s)\n", (*report)["pid"].get<int>(), printable((*report)["comm"].get<std::string>()).c_str());
  std::printf("%-33s %-5s %-10s %8s %8s %8s %8s  %s\n", "RANGE", "PERMS", "OFFSET", "IN-IMAGE", "SWAPPED", "ABSENT",
              "NOT-IN-IMG", "PATH");
  for (const auto& m : (*report)["maps"]) {
    const json::Json& p = m["pages"];
    std::printf("%016llx-%016llx %-5s %010llx %8llu %8llu %8llu %8llu  %s\n",
                static_cast<unsigned long long>(m["start"].get<uint64_t>()),
                static_cast<unsigned long long>(m["end"].get<uint64_t>()), m["perms"].get<std::string>().c_str(),
                static_cast<unsigned long long>(m["offset"].get<uint64_t>()),
                static_cast<unsigned long long>(p["in_image"].get<uint64_t>()),
                static_cast<unsigned long long>(p["swapped"].get<uint64_t>()),
                static_cast<unsigned long long>(p["not_present"].get<uint64_t>() + p["unknown"].get<uint64_t>()),
                static_cast<unsigned long long>(p["not_in_image"].get<uint64_t>()),
                printable(m["path"].get<std::string>()).c_str());
  }
  print_warnings("maps", *report);
  return 0;
}

void common_options(CLI::App* c, KernelArgs& a) {
  c->add_option("bundle", a.input, "whole-memory bundle (mlfx-agent capture --source lime|kmod)")
      ->required()
      ->check(CLI::ExistingFile);
  c->add_option("--key", a.key, "lab private key")->required();
  c->add_option("--trusted-devices", a.trusted, kTrustedDevicesHelp);
  c->add_flag("--json", a.json, "print JSON");
  c->add_flag("-q,--quiet", a.quiet, "no progress bar");
}

}  // namespace

void add_kernel_commands(CLI::App& app, Registry& registry) {
  auto ps_args = std::make_shared<KernelArgs>();
  auto* ps = app.add_subcommand("ps", "list the processes in a whole-memory bundle from the kernel's task list "
                                      "(found with the captured BTF and kallsyms)");
  common_options(ps, *ps_args);
  registry.add(ps, [ps_args] { return run_ps(*ps_args); });

  auto maps_args = std::make_shared<KernelArgs>();
  auto* maps = app.add_subcommand("maps", "list a process's mappings in a whole-memory bundle, with its pages in the "
                                          "image, swapped out or absent");
  common_options(maps, *maps_args);
  maps->add_option("--pid", maps_args->pid, "the process")->required()->check(CLI::NonNegativeNumber);
  registry.add(maps, [maps_args] { return run_maps(*maps_args); });
}

}  // namespace mlfx::cli
