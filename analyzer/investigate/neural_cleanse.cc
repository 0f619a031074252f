#include "investigate/neural_cleanse.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "investigate/png_image.h"
#include "mlfx/base/file.h"
#include "mlfx/base/progress.h"
#include "rehost/recovered_model.h"

namespace mlfx::investigate {

namespace {

constexpr double kEps = 1e-7;  // Keras' epsilon, as in the original's tanh reparameterisation

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct ClassResult {
  int64_t target = 0;
  bool found = false;  // some epoch reached the attack-success threshold
  double mask_l1 = 0, attack_success = 0, loss_ce = 0, cost = 0, seconds = 0;
  int epochs_run = 0;
  at::Tensor mask, pattern;  // (1, 1, H, W), (1, C, H, W)
};

// One class: the optimisation of bolunwang/backdoor visualizer.py, schedule included.
ClassResult reverse_trigger(torch::jit::Module& model, const at::Tensor& x, int64_t target, double lo, double hi,
                            const NeuralCleanseOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor mask_tanh = torch::zeros({1, 1, h, w}).set_requires_grad(true);
  at::Tensor pattern_tanh = torch::zeros({1, c, h, w}).set_requires_grad(true);
  torch::optim::Adam adam({mask_tanh, pattern_tanh}, torch::optim::AdamOptions(o.learning_rate).betas({0.5, 0.9}));
  auto mask_pattern = [&] {
    at::Tensor mask = torch::tanh(mask_tanh) / (2 - 2 * kEps) + 0.5;
    at::Tensor pattern = (torch::tanh(pattern_tanh) / (2 - 2 * kEps) + 0.5) * (hi - lo) + lo;
    return std::make_pair(mask, pattern);
  };
  const double multiplier_down = std::pow(o.cost_multiplier, 1.5);
  double cost = o.init_cost, reg_best = std::numeric_limits<double>::infinity();
  double early_stop_reg_best = reg_best;
  int cost_set_counter = 0, cost_up_counter = 0, cost_down_counter = 0, early_stop_counter = 0;
  bool cost_up_flag = false, cost_down_flag = false;
  ClassResult r;
  r.target = target;
  auto keep_current = [&](double ce, double acc) {
    torch::NoGradGuard no_grad;
    auto [mask, pattern] = mask_pattern();
    r.mask = mask.clone();
    r.pattern = pattern.clone();
    r.loss_ce = ce;
    r.attack_success = acc;
  };
  double last_ce = std::nan(""), last_acc = std::nan("");
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    double ce_sum = 0, reg_sum = 0, acc_sum = 0;
    int batches = 0;
    for (int64_t i = 0; i < n; i += o.batch) {
      at::Tensor xb = x.slice(0, i, std::min(n, i + o.batch));
      auto [mask, pattern] = mask_pattern();
      at::Tensor x_adv = (1 - mask) * xb + mask * pattern;
      at::Tensor logits = model.forward({x_adv}).toTensor();
      at::Tensor labels = torch::full({xb.size(0)}, target, torch::kLong);
      at::Tensor loss_ce = torch::cross_entropy_loss(logits, labels);
      at::Tensor loss_reg = mask.abs().sum();
      at::Tensor loss = loss_ce + cost * loss_reg;
      adam.zero_grad();
      loss.backward();
      adam.step();
      ce_sum += loss_ce.item<double>();
      reg_sum += loss_reg.item<double>();
      acc_sum += logits.argmax(1).eq(target).to(torch::kFloat).mean().item<double>();
      ++batches;
    }
    ++r.epochs_run;
    const double avg_ce = ce_sum / batches, avg_reg = reg_sum / batches, avg_acc = acc_sum / batches;
    last_ce = avg_ce;
    last_acc = avg_acc;
    if (avg_acc >= o.threshold && avg_reg < reg_best) {
      keep_current(avg_ce, avg_acc);
      reg_best = avg_reg;
      r.found = true;
    }
    if (o.early_stop) {
      if (reg_best < std::numeric_limits<double>::infinity()) {
        if (reg_best >= 1.0 * early_stop_reg_best) ++early_stop_counter;
        else early_stop_counter = 0;
      }
      early_stop_reg_best = std::min(reg_best, early_stop_reg_best);
      if (cost_down_flag && cost_up_flag && early_stop_counter >= 5 * o.patience) break;
    }
    if (cost == 0 && avg_acc >= o.threshold) {
      if (++cost_set_counter >= o.patience) {
        cost = o.init_cost;
        cost_up_counter = cost_down_counter = 0;
        cost_up_flag = cost_down_flag = false;
      }
    } else {
      cost_set_counter = 0;
    }
    if (avg_acc >= o.threshold) {
      ++cost_up_counter;
      cost_down_counter = 0;
    } else {
      cost_up_counter = 0;
      ++cost_down_counter;
    }
    if (cost_up_counter >= o.patience) {
      cost_up_counter = 0;
      cost *= o.cost_multiplier;
      cost_up_flag = true;
    } else if (cost_down_counter >= o.patience) {
      cost_down_counter = 0;
      cost /= multiplier_down;
      cost_down_flag = true;
    }
  }
  if (!r.found) keep_current(last_ce, last_acc);  // no epoch reached the threshold: the last mask, marked as such
  r.mask_l1 = r.mask.abs().sum().item<double>();
  r.cost = cost;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

// (1, C, H, W) in [lo, hi] (C = 1 or 3) as an image, enlarged so that small inputs are visible.
Image to_image(const at::Tensor& t, double lo, double hi) {
  at::Tensor v = ((t[0].detach().to(torch::kDouble) - lo) / std::max(hi - lo, 1e-12)).clamp(0, 1);
  const int64_t ch = v.size(0), h = v.size(1), w = v.size(2);
  Image img{static_cast<uint32_t>(w), static_cast<uint32_t>(h), ch == 1 ? 1u : 3u, {}};
  img.pixels.resize(size_t(w) * h * img.channels);
  auto a = v.accessor<double, 3>();
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (uint32_t k = 0; k < img.channels; ++k)
        img.pixels[(size_t(y) * w + x) * img.channels + k] =
            static_cast<uint8_t>(std::lround(255 * a[std::min<int64_t>(k, ch - 1)][y][x]));
  const uint32_t factor = std::max<uint32_t>(1, 256 / std::max<uint32_t>(img.width, img.height));
  return enlarge(img, factor);
}

}  // namespace

AnomalyResult mad_anomaly(const std::vector<double>& l1, double threshold) {
  AnomalyResult a;
  a.median = median(l1);
  std::vector<double> deviation;
  for (double v : l1) deviation.push_back(std::abs(v - a.median));
  a.mad = 1.4826 * median(deviation);
  for (double v : l1) {
    const double index = a.mad > 0 ? std::abs(v - a.median) / a.mad : 0;
    a.index.push_back(index);
    a.flagged.push_back(v < a.median && index > threshold);
  }
  return a;
}

Result<json::Json> neural_cleanse(const NeuralCleanseOptions& o) {
  if (o.epochs <= 0 || o.batch <= 0) return fail(Errc::kInvalidArgument, "--epochs and --batch must be positive");
  MLFX_ASSIGN(torch::jit::Module model, rehost::load_torchscript(o.model));
  MLFX_ASSIGN(auto clean, exporters::SafetensorsFile::read(o.clean));
  const auto* inputs = clean.find("inputs");
  if (!inputs)
    return fail(Errc::kInvalidArgument, o.clean + " has no tensor named 'inputs' (the clean samples, N x C x H x W)");
  at::Tensor x = rehost::to_tensor(clean, *inputs);
  if (x.dim() != 4 || x.size(0) == 0 || x.scalar_type() != at::kFloat)
    return fail(Errc::kInvalidArgument, o.clean + ": 'inputs' must be float32 images, N x C x H x W with N > 0");
  if (o.max_samples && static_cast<size_t>(x.size(0)) > o.max_samples) x = x.slice(0, 0, o.max_samples);
  if (!x.isfinite().all().item<bool>()) return fail(Errc::kInvalidArgument, o.clean + ": 'inputs' holds NaN or infinity");
  if (o.threads > 0) at::set_num_threads(o.threads);
  double lo = x.min().item<double>(), hi = x.max().item<double>();
  if (o.input_range) std::tie(lo, hi) = *o.input_range;
  if (!(hi > lo)) return fail(Errc::kInvalidArgument, "the input range is empty; give --input-range LO,HI");
  MLFX_TRY(make_output_dir(o.out_dir, {"neural_cleanse.json"}));

  model.eval();
  for (auto p : model.parameters()) p.set_requires_grad(false);
  int64_t num_classes = 0;
  try {
    torch::NoGradGuard no_grad;
    at::Tensor probe = model.forward({x.slice(0, 0, 1)}).toTensor();
    if (probe.dim() != 2) return fail(Errc::kInvalidArgument, "the model's output is not (batch, classes) logits");
    num_classes = probe.size(1);
  } catch (const std::exception& e) {
    std::string what = rehost::torch_error(e);
    return fail(Errc::kInvalidArgument, "the model does not run on these inputs: " + what.substr(0, what.find('\n')));
  }
  std::vector<int64_t> classes = o.classes;
  if (classes.empty())
    for (int64_t k = 0; k < num_classes; ++k) classes.push_back(k);
  for (int64_t k : classes)
    if (k < 0 || k >= num_classes)
      return fail(Errc::kInvalidArgument, "class " + std::to_string(k) + " is not among the model's " +
                                              std::to_string(num_classes) + " outputs");

  std::vector<ClassResult> results;
  Progress::set_enabled(o.show_progress);
  Progress progress("neural cleanse", classes.size(), "classes");
  for (int64_t k : classes) {
    try {
      results.push_back(reverse_trigger(model, x, k, lo, hi, o));
    } catch (const std::exception& e) {
      std::string what = rehost::torch_error(e);
      return fail(Errc::kInvalidArgument, "class " + std::to_string(k) + ": " + what.substr(0, what.find('\n')));
    }
    progress.advance(1);
  }
  progress.finish();

  std::vector<double> l1;
  for (const auto& r : results) l1.push_back(r.mask_l1);
  AnomalyResult a = mad_anomaly(l1, o.anomaly_threshold);
  json::Json per_class = json::Json::array(), flagged = json::Json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const std::string stem = "trigger_" + std::to_string(r.target);
    MLFX_TRY(write_png(o.out_dir + "/" + stem + "_mask.png", to_image(r.mask[0].unsqueeze(0), 0, 1)));
    MLFX_TRY(write_png(o.out_dir + "/" + stem + "_pattern.png", to_image(r.pattern, lo, hi)));
    MLFX_TRY(write_png(o.out_dir + "/" + stem + "_fusion.png", to_image(r.mask * r.pattern, lo, hi)));
    per_class.push_back({{"class", r.target}, {"mask_l1", r.mask_l1}, {"found", r.found},
                         {"attack_success", r.attack_success}, {"loss_ce", r.loss_ce}, {"cost", r.cost},
                         {"epochs_run", r.epochs_run}, {"seconds", r.seconds},
                         {"anomaly_index", a.index[i]}, {"flagged", static_cast<bool>(a.flagged[i])},
                         {"images", {{"mask", stem + "_mask.png"}, {"pattern", stem + "_pattern.png"},
                                     {"fusion", stem + "_fusion.png"}}}});
    if (a.flagged[i]) flagged.push_back(r.target);
  }
  json::Json report = {
      {"scan", "neural-cleanse"},
      {"model", o.model},
      {"clean_data", {{"file", o.clean}, {"samples", x.size(0)}, {"shape", x.sizes().vec()}, {"input_range", {lo, hi}}}},
      {"parameters", {{"epochs", o.epochs}, {"batch", o.batch}, {"init_cost", o.init_cost}, {"learning_rate", o.learning_rate},
                      {"adam_betas", {0.5, 0.9}}, {"attack_success_threshold", o.threshold}, {"patience", o.patience},
                      {"cost_multiplier", o.cost_multiplier}, {"early_stop", o.early_stop},
                      {"anomaly_threshold", o.anomaly_threshold}, {"threads", at::get_num_threads()}}},
      {"num_classes", num_classes},
      {"classes", per_class},
      {"median_l1", a.median},
      {"mad", a.mad},
      {"flagged", flagged}};
  MLFX_TRY(write_new_file(o.out_dir + "/neural_cleanse.json", report.dump(1) + "\n", 0640));
  return report;
}

}  // namespace mlfx::investigate
