// The bodies of rehost and scan, linked into mlfx-torch only (they load libtorch).
#include <cstdio>
#include <iostream>

#include "cli/torch_commands.h"
#include "mlfx/base/printable.h"

namespace mlfx::cli {
namespace {

int run_rehost(const rehost::RehostOptions& o, bool json_out) {
  auto r = rehost::rehost(o);
  if (!r) return report_error("rehost", r.error());
  if (json_out) std::cout << printable_json(r->report, 2) << "\n";
  if (!json_out) {
    if (r->path) {
      std::printf("rehosted %s via %s\n", printable(r->class_name).c_str(), r->path->c_str());
      if (r->torchscript) std::printf("  TorchScript: %s/%s\n", o.out_dir.c_str(), r->torchscript->c_str());
      if (r->full_model) std::printf("  full model (torch.load): %s/%s\n", o.out_dir.c_str(), r->full_model->c_str());
    }
    for (const auto& p : r->pairs)
      std::printf("  %s -> %s: %s\n", printable(p.input).c_str(), printable(p.output).c_str(),
                  p.bit_identical ? "bit-identical" : "DIFFERENT");
    std::printf("wrote %s/rehost.json\n", o.out_dir.c_str());
  }
  if (!r->path) {
    std::fprintf(stderr, "mlfx rehost: %s cannot be rehosted here:\n", printable_json(json::Json(r->class_name)).c_str());
    for (const auto& u : r->unsupported)
      std::fprintf(stderr, "  TorchScript from the architecture: %s (%s): %s\n", printable(u.module).c_str(),
                   printable(u.class_name).c_str(), printable(u.reason).c_str());
    for (const auto& c : r->missing_classes)
      std::fprintf(stderr, "  Python: class %s is in no allowed library module nor in the --code-path source; "
                           "pass its source with --code-path (nothing the evidence names is imported)\n",
                   printable_json(json::Json(c)).c_str());
    if (r->python_error) std::fprintf(stderr, "  Python: %s\n", printable(*r->python_error).c_str());
    return rehost::kExitNotRehostable;
  }
  if (r->verified && !r->equivalent) {
    std::fprintf(stderr, "mlfx rehost: the rehosted model's outputs differ from the reference\n");
    return rehost::kExitNotEquivalent;
  }
  return 0;
}

int run_neural_cleanse(const investigate::NeuralCleanseOptions& o, bool json_out) {
  auto r = investigate::neural_cleanse(o);
  if (!r) return report_error("scan neural-cleanse", r.error());
  if (json_out) {
    std::cout << printable_json(*r) << "\n";
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
    std::cout << printable_json(*r) << "\n";
    return 0;
  }
  const auto& j = *r;
  std::printf("%s elements of %s changed; %zu tensors added, %zu missing\n", j["changed_elements"].dump().c_str(),
              j["compared_elements"].dump().c_str(), j["added_tensors"].size(), j["missing_tensors"].size());
  for (const auto& t : j["tensors"]) {
    if (!t.value("comparable", true)) {
      std::printf("  %-40s shape or dtype changed\n", printable(t["key"].get<std::string>()).c_str());
    } else if (t.value("changed", 0) > 0) {
      std::printf("  %-40s %8s changed  L2 %.6g  max %.6g  %zu outlier neuron(s)\n", printable(t["key"].get<std::string>()).c_str(),
                  t["changed"].dump().c_str(), t["l2_distance"].get<double>(), t["max_abs_change"].get<double>(),
                  t.value("neuron_outliers", json::Json::array()).size());
    }
  }
  for (const char* k : {"added_layers", "missing_layers"})
    if (!j[k].empty()) std::printf("%s: %s\n", k, printable_json(j[k]).c_str());
  std::printf("%swrote %s/weight_diff.json\n", j["identical"].get<bool>() ? "identical to the baseline\n" : "",
              o.out_dir.c_str());
  return 0;
}

int run_differential(const investigate::DifferentialOptions& o, bool json_out) {
  auto r = investigate::differential(o);
  if (!r) return report_error("scan differential", r.error());
  if (json_out) {
    std::cout << printable_json(*r) << "\n";
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

}  // namespace

const TorchRunners& torch_runners() {
  static const TorchRunners runners{run_rehost, run_neural_cleanse, run_weight_diff, run_differential};
  return runners;
}

}  // namespace mlfx::cli
