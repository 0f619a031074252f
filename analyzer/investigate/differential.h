// Differential testing: two models on the same inputs, side by side. Where their decisions
// differ is where one was changed (a backdoor's trigger flips labels in the poisoned model
// only). Either model is a TorchScript file or a `mlfx rehost` directory.
#pragma once

#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::investigate {

struct DifferentialOptions {
  std::string model_a, model_b;
  std::vector<std::string> inputs;  // safetensors: 'inputs' and optional 'labels'; one set per file
  std::string out_dir;              // differential.json
  int threads = 0;
  size_t max_listed = 50;           // disagreements listed per input set
};

Result<json::Json> differential(const DifferentialOptions& o);

}  // namespace mlfx::investigate
