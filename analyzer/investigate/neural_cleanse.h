// Neural Cleanse (Wang et al., IEEE S&P 2019; bolunwang/backdoor): for each class, the
// smallest patch (mask m, pattern p; x' = (1-m)x + m p) that turns clean inputs into that
// class, found by Adam on CE + cost * |m|_1 with the original's cost schedule and early stop;
// then the MAD outlier test over the classes' mask L1 norms. A class whose trigger is much
// smaller than the others' (anomaly index > 2, below the median) is flagged as backdoored.
// The same algorithm in plain PyTorch is tests/bench/neural_cleanse_ref.py (the benchmark).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::investigate {

struct NeuralCleanseOptions {
  std::string model;     // a TorchScript file, or a `mlfx rehost` directory
  std::string clean;     // safetensors with `inputs` (N, C, H, W) in the model's input domain
  std::string out_dir;   // neural_cleanse.json and the reversed triggers as PNG
  std::vector<int64_t> classes;  // empty: every class of the model's output
  int epochs = 100;      // passes over the clean set per class (the original's "steps")
  int batch = 32;
  double init_cost = 1e-3, learning_rate = 0.1, threshold = 0.99, cost_multiplier = 2.0;
  int patience = 5;
  bool early_stop = true;
  double anomaly_threshold = 2.0;
  std::optional<std::pair<double, double>> input_range;  // default: the clean inputs' min and max
  size_t max_samples = 0;  // 0: all
  int threads = 0;         // 0: libtorch's default
  bool show_progress = false;
};

// Median absolute deviation outlier test over per-class L1 norms (mad_outlier_detection.py):
// consistency 1.4826, index |l1 - median| / MAD, flagged when below the median and over the
// threshold. Pure arithmetic, tested on its own.
struct AnomalyResult {
  double median = 0, mad = 0;
  std::vector<double> index;  // per input, same order
  std::vector<bool> flagged;
};
AnomalyResult mad_anomaly(const std::vector<double>& l1, double threshold);

// Runs the scan and writes OUT/neural_cleanse.json plus trigger_<c>_{mask,pattern,fusion}.png.
Result<json::Json> neural_cleanse(const NeuralCleanseOptions& o);

}  // namespace mlfx::investigate
