// Weight diff of a recovered model against a baseline (the vendor's release, an earlier
// capture): per tensor, how many elements changed (bitwise), the L2 distance and the largest
// change; per neuron (output row), changes far outside the tensor's norm (MAD outliers); and
// the layers added or missing. Heat maps of |change| per tensor go into the report.
#pragma once

#include <string>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::investigate {

struct WeightDiffOptions {
  std::string model;     // a recovered model directory (state_dict.safetensors) or a .safetensors file
  std::string baseline;  // the same kinds
  std::string out_dir;   // weight_diff.json and heat maps
  double neuron_threshold = 3.5;  // MAD index above which a neuron's change is an outlier
  size_t max_heat_maps = 64;
};

Result<json::Json> weight_diff(const WeightDiffOptions& o);

}  // namespace mlfx::investigate
