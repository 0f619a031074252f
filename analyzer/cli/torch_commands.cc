#include "cli/torch_commands.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>

namespace mlfx::cli {
namespace {

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

void add_torch_commands(CLI::App& app, Registry& registry, const TorchRunners* runners) {
  const Runs runs = runners ? Runs::kHere : Runs::kInTorchHelper;
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
  registry.add(rh, [ro, json_out, runners] { return runners->rehost(*ro, *json_out); }, runs);

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
  registry.add(ncc, [nc, nc_json, nc_quiet, nc_range, runners] {
    if (!nc_range->empty()) {
      if (std::string e = parse_range(*nc_range, nc->input_range); !e.empty()) {
        std::fprintf(stderr, "mlfx scan neural-cleanse: --input-range: %s\n", e.c_str());
        return 2;
      }
    }
    nc->show_progress = !*nc_quiet && !*nc_json;
    return runners->neural_cleanse(*nc, *nc_json);
  }, runs);

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
  registry.add(wdc, [wd, wd_json, runners] { return runners->weight_diff(*wd, *wd_json); }, runs);

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
  registry.add(dfc, [df, df_json, runners] { return runners->differential(*df, *df_json); }, runs);

}

}  // namespace mlfx::cli
