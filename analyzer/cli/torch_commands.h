// The commands that need libtorch: rehost and scan. Their options are declared once, here,
// without libtorch: `mlfx` parses them (so --help and usage errors cost nothing) and hands
// the same argv to `mlfx-torch`, which declares them again with the runners linked in.
#pragma once

#include "cli/command.h"
#include "investigate/differential.h"
#include "investigate/neural_cleanse.h"
#include "investigate/weight_diff.h"
#include "rehost/rehost.h"

namespace mlfx::cli {

struct TorchRunners {
  int (*rehost)(const rehost::RehostOptions&, bool json);
  int (*neural_cleanse)(const investigate::NeuralCleanseOptions&, bool json);
  int (*weight_diff)(const investigate::WeightDiffOptions&, bool json);
  int (*differential)(const investigate::DifferentialOptions&, bool json);
};

// runners == nullptr: the commands are run by mlfx-torch (Runs::kInTorchHelper).
void add_torch_commands(CLI::App& app, Registry& registry, const TorchRunners* runners);

// The runners, in mlfx-torch only (torch_runners.cc).
const TorchRunners& torch_runners();

}  // namespace mlfx::cli
