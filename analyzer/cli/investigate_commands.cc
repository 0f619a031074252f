#include "cli/investigate_commands.h"

#include <cstdio>
#include <iostream>
#include <memory>

#include "investigate/differential.h"
#include "investigate/neural_cleanse.h"
#include "investigate/weight_diff.h"
#include "rehost/rehost.h"
#include "report/report.h"
#include "mlfx/base/printable.h"

namespace mlfx::cli {

namespace {

int report_error(const char* command, const Error& e) {
  std::fprintf(stderr, "mlfx %s: error: %s\n", command, printable(e.to_string()).c_str());
  return 1;
}

int run_rehost(const rehost::RehostOptions& o, bool json_out) {
  auto r = rehost::rehost(o);
  if (!r) return report_error("rehost", r.error());
  const json::Json& rep = *r;
  if (json_out) std::cout << rep.dump(2) << "\n";
  const bool written = rep["path"].is_string();
  if (!json_out) {
    if (written) {
      std::printf("rehosted %s via %s\n", rep["class"].get<std::string>().c_str(), rep["path"].get<std::string>().c_str());
      if (rep["torchscript"].is_string()) std::printf("  TorchScript: %s/%s\n", o.out_dir.c_str(), rep["torchscript"].get<std::string>().c_str());
      if (rep["full_model"].is_string()) std::printf("  full model (torch.load): %s/%s\n", o.out_dir.c_str(), rep["full_model"].get<std::string>().c_str());
    }
    if (rep.contains("verification")) {
      const auto& v = rep["verification"];
      for (const auto& p : v.value("pairs", json::Json::array()))
        std::printf("  %s -> %s: %s\n", p["input"].get<std::string>().c_str(), p["output"].get<std::string>().c_str(),
                    p["bit_identical"].get<bool>() ? "bit-identical" : "DIFFERENT");
    }
    std::printf("wrote %s/rehost.json\n", o.out_dir.c_str());
  }
  if (!written) {
    std::fprintf(stderr, "mlfx rehost: %s cannot be rehosted here:\n", rep["class"].dump().c_str());
    for (const auto& u : rep["torchscript_from_architecture"]["unsupported"])
      std::fprintf(stderr, "  TorchScript from the architecture: %s (%s): %s\n", u["module"].get<std::string>().c_str(),
                   u["class"].get<std::string>().c_str(), u["reason"].get<std::string>().c_str());
    if (rep.contains("python_classes")) {
      const auto& p = rep["python_classes"];
      for (const auto& c : p.value("missing_classes", json::Json::array()))
        std::fprintf(stderr, "  Python: class %s is in no allowed library module nor in the --code-path source; "
                             "pass its source with --code-path (nothing the evidence names is imported)\n", printable_json(c).c_str());
      if (p.contains("error") && p["error"].is_string())
        std::fprintf(stderr, "  Python: %s\n", printable(p["error"].get<std::string>()).c_str());
    }
    return rehost::kExitNotRehostable;
  }
  if (rep.contains("verification") && !rep["verification"].value("equivalent", false)) {
    std::fprintf(stderr, "mlfx rehost: the rehosted model's outputs differ from the reference\n");
    return rehost::kExitNotEquivalent;
  }
  return 0;
}

int run_neural_cleanse(const investigate::NeuralCleanseOptions& o, bool json_out) {
  auto r = investigate::neural_cleanse(o);
  if (!r) return report_error("scan neural-cleanse", r.error());
  if (json_out) {
    std::cout << r->dump() << "\n";
    return 0;
  }
  std::printf("Neural Cleanse: %zu classes, median mask L1 %.3f, MAD %.3f\n", (*r)["classes"].size(),
              (*r)["median_l1"].get<double>(), (*r)["mad"].get<double>());
  for (const auto& c : (*r)["classes"])
    std::printf("  class %3lld  mask L1 %9.3f  anomaly index %6.2f  attack success %5.1f%%%s%s\n",
                static_cast<long long>(c["class"].get<int64_t>()), c["mask_l1"].get<double>(),
                c["anomaly_index"].get<double>(), 100 * c["attack_success"].get<double>(),
                c["found"].get<bool>() ? "" : "  (threshold not reached)", c["flagged"].get<bool>() ? "  FLAGGED" : "");
  std::printf("%s\nwrote %s/neural_cleanse.json\n",
              (*r)["flagged"].empty() ? "no class flagged" : ("flagged (backdoor suspected): " + (*r)["flagged"].dump()).c_str(),
              o.out_dir.c_str());
  return 0;
}

int run_weight_diff(const investigate::WeightDiffOptions& o, bool json_out) {
  auto r = investigate::weight_diff(o);
  if (!r) return report_error("scan weight-diff", r.error());
  if (json_out) {
    std::cout << r->dump() << "\n";
    return 0;
  }
  const auto& j = *r;
  std::printf("%s elements of %s changed; %zu tensors added, %zu missing\n", j["changed_elements"].dump().c_str(),
              j["compared_elements"].dump().c_str(), j["added_tensors"].size(), j["missing_tensors"].size());
  for (const auto& t : j["tensors"]) {
    if (!t.value("comparable", true)) {
      std::printf("  %-40s shape or dtype changed\n", t["key"].get<std::string>().c_str());
    } else if (t.value("changed", 0) > 0) {
      std::printf("  %-40s %8s changed  L2 %.6g  max %.6g  %zu outlier neuron(s)\n", t["key"].get<std::string>().c_str(),
                  t["changed"].dump().c_str(), t["l2_distance"].get<double>(), t["max_abs_change"].get<double>(),
                  t.value("neuron_outliers", json::Json::array()).size());
    }
  }
  for (const char* k : {"added_layers", "missing_layers"})
    if (!j[k].empty()) std::printf("%s: %s\n", k, j[k].dump().c_str());
  std::printf("%swrote %s/weight_diff.json\n", j["identical"].get<bool>() ? "identical to the baseline\n" : "",
              o.out_dir.c_str());
  return 0;
}

int run_differential(const investigate::DifferentialOptions& o, bool json_out) {
  auto r = investigate::differential(o);
  if (!r) return report_error("scan differential", r.error());
  if (json_out) {
    std::cout << r->dump() << "\n";
    return 0;
  }
  for (const auto& s : (*r)["input_sets"]) {
    std::printf("%s: %s of %s samples decided differently", s["inputs"].get<std::string>().c_str(),
                s["disagreements"].dump().c_str(), s["samples"].dump().c_str());
    if (s.contains("accuracy_a"))
      std::printf("; accuracy A %.1f%%, B %.1f%%", 100 * s["accuracy_a"].get<double>(), 100 * s["accuracy_b"].get<double>());
    std::printf("\n  flips (A -> B): %s\n", s["flips"].dump().c_str());
  }
  std::printf("wrote %s/differential.json\n", o.out_dir.c_str());
  return 0;
}

// "LO,HI" -> the pair.
std::string parse_range(const std::string& s, std::optional<std::pair<double, double>>& out) {
  const size_t comma = s.find(',');
  char* end = nullptr;
  if (comma == std::string::npos) return "want LO,HI, e.g. 0,1";
  double lo = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + comma) return "bad LO in " + s;
  double hi = std::strtod(s.c_str() + comma + 1, &end);
  if (*end || !(hi > lo)) return "bad HI in " + s + " (it must exceed LO)";
  out = std::make_pair(lo, hi);
  return "";
}

}  // namespace

void add_investigate_commands(CLI::App& app, Commands& out) {
  auto ro = std::make_shared<rehost::RehostOptions>();
  auto json_out = std::make_shared<bool>(false);
  auto* rh = app.add_subcommand("rehost", "make a recovered model live: TorchScript built from its architecture "
                                           "(standard torch.nn), else the lab's Python with the model's classes");
  rh->add_option("model_dir", ro->model_dir, "a model directory of `mlfx recover` (models/<n>-<Class>)")
      ->required()->check(CLI::ExistingDirectory);
  rh->add_option("--out", ro->out_dir, "output directory (new or empty)")->required();
  rh->add_option("--code-path", ro->code_paths, "the model's Python source (a .py file or a directory), for classes "
                                                "that are not in an allowed library module; repeatable. Files are "
                                                "loaded by path: other files beside a given file are never imported, "
                                                "every .py file in a given directory may run")
      ->check(CLI::ExistingPath);
  rh->add_option("--allow-module", ro->allow_modules, "a library module whose classes path (b) may import, beyond "
                                                      "torch.nn, torch.ao.nn, torchvision.models and torchvision.ops; "
                                                      "repeatable, recorded in rehost.json");
  rh->add_flag("--verify", ro->verify, "run the rehosted model on --reference inputs and compare outputs bit for bit");
  rh->add_option("--reference", ro->reference, "safetensors file of input/output (or input.N/output.N) tensors")
      ->check(CLI::ExistingFile);
  rh->add_option("--python", ro->python, "Python with torch for path (b) (default /usr/bin/python3)");
  rh->add_flag("!--no-python", ro->allow_python, "only the TorchScript-from-architecture path");
  rh->add_option("--threads", ro->threads, "intra-op threads when verifying (default: libtorch's)")
      ->check(CLI::NonNegativeNumber);
  rh->add_flag("--json", *json_out, "print rehost.json");
  out.emplace_back(rh, [ro, json_out] { return run_rehost(*ro, *json_out); });

  auto* scan = app.add_subcommand("scan", "white-box investigations of a rehosted model")->require_subcommand(1);
  auto nc = std::make_shared<investigate::NeuralCleanseOptions>();
  auto nc_json = std::make_shared<bool>(false), nc_quiet = std::make_shared<bool>(false);
  auto nc_range = std::make_shared<std::string>();
  auto* ncc = scan->add_subcommand("neural-cleanse", "reverse-engineer a minimal trigger per class and flag "
                                                    "outliers (Neural Cleanse, MAD anomaly index)");
  ncc->add_option("model", nc->model, "TorchScript model file, or a `mlfx rehost` output directory")
      ->required()->check(CLI::ExistingPath);
  ncc->add_option("--clean", nc->clean, "small clean data set: safetensors with 'inputs' (N x C x H x W float32, "
                                        "in the model's input domain)")->required()->check(CLI::ExistingFile);
  ncc->add_option("--out", nc->out_dir, "output directory (new or empty)")->required();
  ncc->add_option("--classes", nc->classes, "only these classes (default: all)")->delimiter(',');
  ncc->add_option("--epochs", nc->epochs, "passes over the clean set per class (default 100)")->check(CLI::PositiveNumber);
  ncc->add_option("--batch", nc->batch, "mini-batch size (default 32)")->check(CLI::PositiveNumber);
  ncc->add_option("--init-cost", nc->init_cost, "starting weight of the mask's L1 norm (default 1e-3)");
  ncc->add_option("--threshold", nc->threshold, "attack success a trigger must reach (default 0.99)");
  ncc->add_option("--anomaly-threshold", nc->anomaly_threshold, "flag classes whose anomaly index exceeds this (default 2)");
  ncc->add_option("--input-range", *nc_range, "LO,HI of the input domain (default: the clean inputs' min and max)");
  ncc->add_option("--max-samples", nc->max_samples, "use at most this many clean samples");
  ncc->add_flag("!--no-early-stop", nc->early_stop, "run every epoch (for benchmarks)");
  ncc->add_option("--threads", nc->threads, "intra-op threads (default: libtorch's)")->check(CLI::NonNegativeNumber);
  ncc->add_flag("--json", *nc_json, "print neural_cleanse.json as one line");
  ncc->add_flag("-q,--quiet", *nc_quiet, "no progress bar");
  out.emplace_back(ncc, [nc, nc_json, nc_quiet, nc_range] {
    if (!nc_range->empty()) {
      if (std::string e = parse_range(*nc_range, nc->input_range); !e.empty()) {
        std::fprintf(stderr, "mlfx scan neural-cleanse: --input-range: %s\n", e.c_str());
        return 2;
      }
    }
    nc->show_progress = !*nc_quiet && !*nc_json;
    return run_neural_cleanse(*nc, *nc_json);
  });

  auto wd = std::make_shared<investigate::WeightDiffOptions>();
  auto wd_json = std::make_shared<bool>(false);
  auto* wdc = scan->add_subcommand("weight-diff", "compare a model's weights with a baseline: per tensor and neuron, "
                                                 "added and missing layers");
  wdc->add_option("model", wd->model, "a recovered model directory, or a .safetensors state_dict")
      ->required()->check(CLI::ExistingPath);
  wdc->add_option("--baseline", wd->baseline, "the reference model: the same kinds")->required()->check(CLI::ExistingPath);
  wdc->add_option("--out", wd->out_dir, "output directory (new or empty)")->required();
  wdc->add_option("--neuron-threshold", wd->neuron_threshold, "MAD index above which a neuron's change is an outlier (default 3.5)");
  wdc->add_flag("--json", *wd_json, "print weight_diff.json as one line");
  out.emplace_back(wdc, [wd, wd_json] { return run_weight_diff(*wd, *wd_json); });

  auto df = std::make_shared<investigate::DifferentialOptions>();
  auto df_json = std::make_shared<bool>(false);
  auto* dfc = scan->add_subcommand("differential", "run two models on the same inputs and report where their "
                                                  "decisions differ");
  dfc->add_option("model_a", df->model_a, "TorchScript file or `mlfx rehost` directory")->required()->check(CLI::ExistingPath);
  dfc->add_option("model_b", df->model_b, "the other model")->required()->check(CLI::ExistingPath);
  dfc->add_option("--inputs", df->inputs, "safetensors with 'inputs' (and optional 'labels'); repeatable")
      ->required()->check(CLI::ExistingFile);
  dfc->add_option("--out", df->out_dir, "output directory (new or empty)")->required();
  dfc->add_option("--threads", df->threads, "intra-op threads (default: libtorch's)")->check(CLI::NonNegativeNumber);
  dfc->add_flag("--json", *df_json, "print differential.json as one line");
  out.emplace_back(dfc, [df, df_json] { return run_differential(*df, *df_json); });

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
  out.emplace_back(rpc, [rp] {
    auto r = report::build_report(*rp);
    if (!r) return report_error("report", r.error());
    for (const auto& st : (*r)["verdict"]["statements"]) std::printf("%s\n", printable(st["text"].get<std::string>()).c_str());
    for (const auto& f : (*r)["findings"]) std::printf("- %s\n", printable(f["text"].get<std::string>()).c_str());
    std::printf("wrote %s/report.html and %s/report.json\n", rp->out_dir.c_str(), rp->out_dir.c_str());
    return 0;
  });
}

}  // namespace mlfx::cli
