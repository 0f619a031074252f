// mlfx report: the case's forensic report, HTML + JSON.
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "mlfx/base/printable.h"
#include "report/report.h"

namespace mlfx::cli {

void add_report_command(CLI::App& app, Registry& registry) {
  auto rp = std::make_shared<report::ReportOptions>();
  auto* rpc = app.add_subcommand("report", "write the case's forensic report: one self-contained HTML page and "
                                           "report.json (custody, hashes, device, timeline, models, scans)");
  rpc->add_option("--out", rp->out_dir, "output directory (new or empty)")->required();
  rpc->add_option("--case", rp->case_id, "case identifier (default: the bundle's)");
  rpc->add_option("--examiner", rp->examiner, "who wrote the report");
  rpc->add_option("--title", rp->title, "page title");
  rpc->add_option("--bundle", rp->bundle, "the evidence bundle: manifest, custody chain, verification")->check(CLI::ExistingFile);
  rpc->add_option("--trusted-devices", rp->trusted_devices_dir, kTrustedDevicesHelp);
  rpc->add_option("--recovery", rp->recovery, "a `mlfx recover` output directory")->check(CLI::ExistingDirectory);
  rpc->add_option("--rehost", rp->rehosts, "a `mlfx rehost` output directory; repeatable")->check(CLI::ExistingDirectory);
  rpc->add_option("--scan", rp->scans, "a `mlfx scan` output directory; repeatable")->check(CLI::ExistingDirectory);
  registry.add(rpc, [rp] {
    auto r = report::build_report(*rp);
    if (!r) return report_error("report", r.error());
    for (const auto& st : (*r)["verdict"]["statements"]) std::printf("%s\n", printable(st["text"].get<std::string>()).c_str());
    for (const auto& f : (*r)["findings"]) std::printf("- %s\n", printable(f["text"].get<std::string>()).c_str());
    std::printf("wrote %s/report.html and %s/report.json\n", rp->out_dir.c_str(), rp->out_dir.c_str());
    return 0;
  });
}

}  // namespace mlfx::cli
