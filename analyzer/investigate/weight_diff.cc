#include "investigate/weight_diff.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "exporters/safetensors_reader.h"
#include "investigate/neural_cleanse.h"
#include "investigate/png_image.h"
#include "mlfx/base/file.h"
#include "rehost/recovered_model.h"

namespace mlfx::investigate {

namespace {

constexpr uint32_t kHeatMapMax = 256;  // pixels per side; larger tensors are max-pooled

Result<exporters::SafetensorsFile> open_state(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return exporters::SafetensorsFile::read(path + "/state_dict.safetensors");
  return exporters::SafetensorsFile::read(path);
}

// The layer (module path) of a state_dict key: everything before the last dot.
std::string layer_of(const std::string& key) {
  const size_t dot = key.rfind('.');
  return dot == std::string::npos ? "" : key.substr(0, dot);
}

// |delta| as rows = output neurons, columns = the rest, max-pooled to at most kHeatMapMax.
Image heat_map(const at::Tensor& delta) {
  at::Tensor m = delta.abs().reshape({delta.size(0), -1}).to(at::kDouble);
  const int64_t rows = m.size(0), cols = m.size(1);
  const int64_t fy = (rows + kHeatMapMax - 1) / kHeatMapMax, fx = (cols + kHeatMapMax - 1) / kHeatMapMax;
  const int64_t h = (rows + fy - 1) / fy, w = (cols + fx - 1) / fx;
  at::Tensor padded = at::zeros({h * fy, w * fx}, at::kDouble);
  padded.slice(0, 0, rows).slice(1, 0, cols).copy_(m);
  at::Tensor pooled = padded.reshape({h, fy, w, fx}).amax({1, 3});
  const double top = pooled.max().item<double>();
  Image img{static_cast<uint32_t>(w), static_cast<uint32_t>(h), 3, {}};
  img.pixels.resize(size_t(w) * h * 3);
  auto a = pooled.accessor<double, 2>();
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) heat_color(top > 0 ? a[y][x] / top : 0, &img.pixels[(size_t(y) * w + x) * 3]);
  const uint32_t factor = std::max<uint32_t>(1, 128 / std::max<uint32_t>(img.width, img.height));
  return enlarge(img, factor);
}

std::string file_safe(const std::string& key) {
  std::string s = key;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  return s;
}

}  // namespace

Result<json::Json> weight_diff(const WeightDiffOptions& o) {
  MLFX_ASSIGN(auto model, open_state(o.model));
  MLFX_ASSIGN(auto base, open_state(o.baseline));
  MLFX_TRY(make_output_dir(o.out_dir, {"weight_diff.json"}));
  std::set<std::string> base_keys, model_keys;
  for (const auto& t : base.tensors()) base_keys.insert(t.name);
  for (const auto& t : model.tensors()) model_keys.insert(t.name);

  json::Json tensors = json::Json::array(), added = json::Json::array(), missing = json::Json::array();
  std::set<std::string> added_layers, missing_layers, changed_layers;
  uint64_t changed_total = 0, elements_total = 0;
  size_t heat_maps = 0;
  for (const auto& t : model.tensors()) {
    if (!base_keys.count(t.name)) {
      added.push_back(t.name);
      added_layers.insert(layer_of(t.name));
      continue;
    }
    const auto& b = *base.find(t.name);
    json::Json e = {{"key", t.name}, {"dtype", std::string(t.dtype->torch_name)}, {"shape", t.shape}};
    if (t.dtype != b.dtype || t.shape != b.shape) {
      e["comparable"] = false;
      e["baseline_dtype"] = std::string(b.dtype->torch_name);
      e["baseline_shape"] = b.shape;
      changed_layers.insert(layer_of(t.name));
      tensors.push_back(std::move(e));
      continue;
    }
    // Elements compared by their bits (so -0.0 vs 0.0 and NaN payloads count as changes).
    const uint64_t n = t.dtype->item_size ? (t.end - t.begin) / t.dtype->item_size : 0;
    ByteView x = model.data(t), y = base.data(b);
    uint64_t changed = 0;
    for (uint64_t i = 0; i < n; ++i)
      changed += std::memcmp(x.data() + i * t.dtype->item_size, y.data() + i * t.dtype->item_size, t.dtype->item_size) != 0;
    e["comparable"] = true;
    e["elements"] = n;
    e["changed"] = changed;
    changed_total += changed;
    elements_total += n;
    if (changed && t.dtype->item_size && !t.dtype->quantized) {
      changed_layers.insert(layer_of(t.name));
      at::Tensor a = rehost::to_tensor(model, t).to(at::kDouble), z = rehost::to_tensor(base, b).to(at::kDouble);
      at::Tensor delta = a - z;
      const double l2 = delta.norm().item<double>(), base_l2 = z.norm().item<double>();
      e["l2_distance"] = l2;
      e["relative_l2"] = base_l2 > 0 ? l2 / base_l2 : 0.0;
      e["max_abs_change"] = delta.abs().max().item<double>();
      if (delta.dim() >= 2 && delta.size(0) >= 3) {
        at::Tensor per_neuron = delta.reshape({delta.size(0), -1}).norm(2, 1);
        std::vector<double> norms(per_neuron.data_ptr<double>(), per_neuron.data_ptr<double>() + per_neuron.numel());
        AnomalyResult a = mad_anomaly(norms, o.neuron_threshold);
        json::Json outliers = json::Json::array();
        for (size_t i = 0; i < norms.size(); ++i)
          if (norms[i] > a.median && a.index[i] > o.neuron_threshold)
            outliers.push_back({{"neuron", i}, {"l2_change", norms[i]}, {"index", a.index[i]}});
        e["neuron_median_l2_change"] = a.median;
        e["neuron_outliers"] = outliers;
      }
      if (delta.dim() >= 1 && heat_maps < o.max_heat_maps) {
        const std::string name = "heat_" + file_safe(t.name) + ".png";
        MLFX_TRY(write_png(o.out_dir + "/" + name, heat_map(delta.dim() == 1 ? delta.unsqueeze(1) : delta)));
        e["heat_map"] = name;
        ++heat_maps;
      }
    }
    tensors.push_back(std::move(e));
  }
  for (const auto& k : base_keys)
    if (!model_keys.count(k)) {
      missing.push_back(k);
      missing_layers.insert(layer_of(k));
    }
  // A layer is added (missing) only when none of its tensors is in the other model.
  auto whole = [](const std::set<std::string>& layers, const std::set<std::string>& other_keys) {
    json::Json out = json::Json::array();
    for (const auto& l : layers) {
      bool any = false;
      for (const auto& k : other_keys) any = any || layer_of(k) == l;
      if (!any) out.push_back(l);
    }
    return out;
  };
  json::Json report = {{"scan", "weight-diff"},
                       {"model", o.model},
                       {"baseline", o.baseline},
                       {"tensors", tensors},
                       {"added_tensors", added},
                       {"missing_tensors", missing},
                       {"added_layers", whole(added_layers, base_keys)},
                       {"missing_layers", whole(missing_layers, model_keys)},
                       {"changed_layers", changed_layers},
                       {"changed_elements", changed_total},
                       {"compared_elements", elements_total},
                       {"identical", changed_total == 0 && added.empty() && missing.empty() && changed_layers.empty()},
                       {"parameters", {{"neuron_threshold", o.neuron_threshold}}}};
  MLFX_TRY(write_new_file(o.out_dir + "/weight_diff.json", report.dump(1) + "\n", 0640));
  return report;
}

}  // namespace mlfx::investigate
