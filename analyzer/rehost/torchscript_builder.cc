#include "rehost/torchscript_builder.h"

#include <cmath>
#include <cstdio>
#include <functional>

namespace mlfx::rehost {

namespace {

// ---- reading hyperparameters out of architecture.json into TorchScript literals ----------

struct Node {
  const json::Json& j;
  const json::Json& attrs() const { return j["attributes"]; }
  bool has(const std::string& name) const { return attrs().contains(name); }
  const json::Json& at(const std::string& name) const { return attrs()[name]; }
  bool has_tensor(const std::string& name) const {  // a parameter or buffer that is not None
    for (const char* kind : {"parameters", "buffers"})
      for (const auto& s : j.value(kind, json::Json::array()))
        if (s.value("name", "") == name) return !s.value("none", true);
    return false;
  }
};

Error missing(const std::string& name, const std::string& want) {
  return Error(Errc::kUnsupported, "attribute '" + name + "' is missing or not " + want);
}

std::string float_literal(double v) {
  if (std::isnan(v)) return "float(\"nan\")";
  if (std::isinf(v)) return v > 0 ? "float(\"inf\")" : "float(\"-inf\")";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

Result<std::string> as_float(const Node& n, const std::string& name) {
  if (!n.has(name)) return fail(missing(name, "a number"));
  const auto& v = n.at(name);
  if (v.is_number()) return float_literal(v.get<double>());
  if (v.is_string() && (v == "nan" || v == "inf" || v == "-inf")) return "float(\"" + v.get<std::string>() + "\")";
  return fail(missing(name, "a number"));
}

Result<int64_t> as_int(const Node& n, const std::string& name) {
  if (!n.has(name) || !n.at(name).is_number_integer()) return fail(missing(name, "an integer"));
  return n.at(name).get<int64_t>();
}

Result<std::string> as_bool(const Node& n, const std::string& name) {
  if (!n.has(name) || !n.at(name).is_boolean()) return fail(missing(name, "a bool"));
  return std::string(n.at(name).get<bool>() ? "True" : "False");
}

// An int or a tuple of ints (nn's _pair and friends), as a list of `dims` ints.
Result<std::string> as_ints(const Node& n, const std::string& name, size_t dims) {
  if (!n.has(name)) return fail(missing(name, "an int or a tuple of ints"));
  const auto& v = n.at(name);
  std::vector<int64_t> out;
  if (v.is_number_integer()) out.assign(dims, v.get<int64_t>());
  else if (v.is_array())
    for (const auto& x : v) {
      if (!x.is_number_integer()) return fail(missing(name, "a tuple of ints"));
      out.push_back(x.get<int64_t>());
    }
  else return fail(missing(name, "an int or a tuple of ints"));
  if (dims && out.size() != dims) return fail(missing(name, std::to_string(dims) + " ints"));
  std::string s = "[";
  for (size_t i = 0; i < out.size(); ++i) s += (i ? ", " : "") + std::to_string(out[i]);
  return s + "]";
}

bool is_none(const Node& n, const std::string& name) { return !n.has(name) || n.at(name).is_null(); }

std::string tensor_or_none(const Node& n, const std::string& name) {
  return n.has_tensor(name) ? "self." + name : "None";
}

std::string def(const std::string& expression) {
  return "def forward(self, input: Tensor) -> Tensor:\n    return " + expression + "\n";
}

// ---- the forwards of torch.nn classes, mirroring torch/nn/modules/*.py (torch 1.13 / 2.x) ----

using ForwardWriter = std::function<Result<std::string>(const Node&)>;

Result<std::string> conv(const Node& n, int dims, bool transposed) {
  const std::string d = std::to_string(dims) + "d";
  MLFX_ASSIGN(std::string stride, as_ints(n, "stride", dims));
  MLFX_ASSIGN(std::string dilation, as_ints(n, "dilation", dims));
  MLFX_ASSIGN(int64_t groups, as_int(n, "groups"));
  const std::string mode = n.has("padding_mode") && n.at("padding_mode").is_string()
                               ? n.at("padding_mode").get<std::string>() : "zeros";
  const std::string weight = "self.weight", bias = tensor_or_none(n, "bias");
  if (transposed) {
    if (mode != "zeros") return fail(Errc::kUnsupported, "ConvTranspose with padding_mode " + mode);
    MLFX_ASSIGN(std::string padding, as_ints(n, "padding", dims));
    MLFX_ASSIGN(std::string output_padding, as_ints(n, "output_padding", dims));
    return def("torch.conv_transpose" + d + "(input, " + weight + ", " + bias + ", " + stride + ", " + padding +
               ", " + output_padding + ", " + std::to_string(groups) + ", " + dilation + ")");
  }
  std::string padding;
  if (n.has("padding") && n.at("padding").is_string()) padding = "\"" + n.at("padding").get<std::string>() + "\"";
  else {
    MLFX_ASSIGN(padding, as_ints(n, "padding", dims));
  }
  if (mode == "zeros")
    return def("torch.conv" + d + "(input, " + weight + ", " + bias + ", " + stride + ", " + padding + ", " +
               dilation + ", " + std::to_string(groups) + ")");
  if (mode != "reflect" && mode != "replicate" && mode != "circular")
    return fail(Errc::kUnsupported, "padding_mode " + mode);
  MLFX_ASSIGN(std::string pad, as_ints(n, "_reversed_padding_repeated_twice", 2 * dims));
  return def("torch.conv" + d + "(torch.pad(input, " + pad + ", \"" + mode + "\", None), " + weight + ", " + bias +
             ", " + stride + ", " + std::string(dims == 1 ? "[0]" : dims == 2 ? "[0, 0]" : "[0, 0, 0]") + ", " +
             dilation + ", " + std::to_string(groups) + ")");
}

// _BatchNorm.forward, including its training-mode statistics updates.
Result<std::string> batch_norm(const Node& n) {
  MLFX_ASSIGN(std::string eps, as_float(n, "eps"));
  MLFX_ASSIGN(std::string track, as_bool(n, "track_running_stats"));
  const bool momentum_none = is_none(n, "momentum");
  std::string momentum = "0.0";
  if (!momentum_none) {
    MLFX_ASSIGN(momentum, as_float(n, "momentum"));
  }
  const bool has_running = n.has_tensor("running_mean") && n.has_tensor("running_var");
  const bool has_count = n.has_tensor("num_batches_tracked");
  std::string s = "def forward(self, input: Tensor) -> Tensor:\n";
  s += "    exponential_average_factor = " + momentum + "\n";
  if (track == "True" && has_count) {
    s += "    if self.training:\n";
    s += "        self.num_batches_tracked.add_(1)\n";
    if (momentum_none) s += "        exponential_average_factor = 1.0 / float(self.num_batches_tracked)\n";
  }
  s += std::string("    bn_training = True if self.training else ") + (has_running ? "False" : "True") + "\n";
  const std::string stats_used = track == "True" ? "" : " if not self.training else None";
  const std::string mean = has_running ? "self.running_mean" + stats_used : "None";
  const std::string var = has_running ? "self.running_var" + stats_used : "None";
  s += "    return torch.batch_norm(input, " + tensor_or_none(n, "weight") + ", " + tensor_or_none(n, "bias") + ", " +
       mean + ", " + var + ", bn_training, exponential_average_factor, " + eps + ", True)\n";
  return s;
}

Result<std::string> max_pool(const Node& n, int dims) {
  MLFX_ASSIGN(std::string ceil, as_bool(n, "ceil_mode"));
  if (n.has("return_indices") && n.at("return_indices") == true)
    return fail(Errc::kUnsupported, "return_indices=True (a tuple output)");
  MLFX_ASSIGN(std::string k, as_ints(n, "kernel_size", dims));
  std::string stride = k;
  if (!is_none(n, "stride")) {
    MLFX_ASSIGN(stride, as_ints(n, "stride", dims));
  }
  MLFX_ASSIGN(std::string padding, as_ints(n, "padding", dims));
  MLFX_ASSIGN(std::string dilation, as_ints(n, "dilation", dims));
  return def("torch.max_pool" + std::to_string(dims) + "d(input, " + k + ", " + stride + ", " + padding + ", " +
             dilation + ", " + ceil + ")");
}

Result<std::string> avg_pool(const Node& n, int dims) {
  MLFX_ASSIGN(std::string k, as_ints(n, "kernel_size", dims));
  std::string stride = k;
  if (!is_none(n, "stride")) {
    MLFX_ASSIGN(stride, as_ints(n, "stride", dims));
  }
  MLFX_ASSIGN(std::string padding, as_ints(n, "padding", dims));
  MLFX_ASSIGN(std::string ceil, as_bool(n, "ceil_mode"));
  MLFX_ASSIGN(std::string include, as_bool(n, "count_include_pad"));
  std::string call = "torch.avg_pool" + std::to_string(dims) + "d(input, " + k + ", " + stride + ", " + padding +
                     ", " + ceil + ", " + include;
  if (dims == 1) return def(call + ")");
  std::string divisor = "None";
  if (!is_none(n, "divisor_override")) {
    MLFX_ASSIGN(int64_t d, as_int(n, "divisor_override"));
    divisor = std::to_string(d);
  }
  return def(call + ", " + divisor + ")");
}

Result<std::string> adaptive_pool(const Node& n, int dims, bool max) {
  MLFX_ASSIGN(std::string size, as_ints(n, "output_size", dims));
  const std::string call = std::string("torch.adaptive_") + (max ? "max" : "avg") + "_pool" + std::to_string(dims) +
                           "d(input, " + size + ")";
  if (max && n.has("return_indices") && n.at("return_indices") == true)
    return fail(Errc::kUnsupported, "return_indices=True (a tuple output)");
  return def(max ? call + "[0]" : call);
}

Result<std::string> dim_arg(const Node& n, const std::string& fn) {
  if (is_none(n, "dim")) return fail(Errc::kUnsupported, "dim=None (the deprecated implicit dimension)");
  MLFX_ASSIGN(int64_t dim, as_int(n, "dim"));
  return def("torch." + fn + "(input, " + std::to_string(dim) + ", None)");
}

Result<std::string> dropout(const Node& n, const std::string& fn) {
  MLFX_ASSIGN(std::string p, as_float(n, "p"));
  return def("torch." + fn + "(input, " + p + ", self.training)");
}

const std::map<std::string, ForwardWriter>& forward_table() {
  static const std::map<std::string, ForwardWriter> table = [] {
    std::map<std::string, ForwardWriter> t;
    const std::string nn = "torch.nn.modules.";
    auto simple = [&](const std::string& cls, const std::string& expression) {
      t[nn + cls] = [expression](const Node&) -> Result<std::string> { return def(expression); };
    };
    simple("linear.Identity", "input");
    simple("activation.ReLU", "torch.relu(input)");
    simple("activation.ReLU6", "torch.relu6(input)");
    simple("activation.Sigmoid", "torch.sigmoid(input)");
    simple("activation.Tanh", "torch.tanh(input)");
    simple("activation.SiLU", "torch.silu(input)");
    simple("activation.Mish", "torch.mish(input)");
    simple("activation.Hardswish", "torch.hardswish(input)");
    simple("activation.Hardsigmoid", "torch.hardsigmoid(input)");
    simple("activation.SELU", "torch.selu(input)");
    t[nn + "linear.Linear"] = [](const Node& n) -> Result<std::string> {
      return def("torch.linear(input, self.weight, " + tensor_or_none(n, "bias") + ")");
    };
    for (int d = 1; d <= 3; ++d) {
      const std::string s = std::to_string(d) + "d";
      t[nn + "conv.Conv" + s] = [d](const Node& n) { return conv(n, d, false); };
      t[nn + "conv.ConvTranspose" + s] = [d](const Node& n) { return conv(n, d, true); };
      t[nn + "batchnorm.BatchNorm" + s] = batch_norm;
      t[nn + "pooling.MaxPool" + s] = [d](const Node& n) { return max_pool(n, d); };
      t[nn + "pooling.AvgPool" + s] = [d](const Node& n) { return avg_pool(n, d); };
      t[nn + "pooling.AdaptiveAvgPool" + s] = [d](const Node& n) { return adaptive_pool(n, d, false); };
      t[nn + "pooling.AdaptiveMaxPool" + s] = [d](const Node& n) { return adaptive_pool(n, d, true); };
    }
    t[nn + "activation.GELU"] = [](const Node& n) -> Result<std::string> {
      std::string approximate = n.has("approximate") && n.at("approximate").is_string()
                                    ? n.at("approximate").get<std::string>() : "none";
      if (approximate != "none" && approximate != "tanh") return fail(Errc::kUnsupported, "GELU approximate=" + approximate);
      return def("torch.gelu(input, approximate=\"" + approximate + "\")");
    };
    t[nn + "activation.LeakyReLU"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(std::string slope, as_float(n, "negative_slope"));
      return def("torch.leaky_relu(input, " + slope + ")");
    };
    t[nn + "activation.ELU"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(std::string alpha, as_float(n, "alpha"));
      return def("torch.elu(input, " + alpha + ")");
    };
    t[nn + "activation.CELU"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(std::string alpha, as_float(n, "alpha"));
      return def("torch.celu(input, " + alpha + ")");
    };
    t[nn + "activation.Hardtanh"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(std::string lo, as_float(n, "min_val"));
      MLFX_ASSIGN(std::string hi, as_float(n, "max_val"));
      return def("torch.hardtanh(input, " + lo + ", " + hi + ")");
    };
    t[nn + "activation.Softplus"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(std::string beta, as_float(n, "beta"));
      MLFX_ASSIGN(std::string threshold, as_float(n, "threshold"));
      return def("torch.softplus(input, " + beta + ", " + threshold + ")");
    };
    t[nn + "activation.PReLU"] = [](const Node&) -> Result<std::string> { return def("torch.prelu(input, self.weight)"); };
    t[nn + "activation.Softmax"] = [](const Node& n) { return dim_arg(n, "softmax"); };
    t[nn + "activation.LogSoftmax"] = [](const Node& n) { return dim_arg(n, "log_softmax"); };
    t[nn + "dropout.Dropout"] = [](const Node& n) { return dropout(n, "dropout"); };
    t[nn + "dropout.Dropout1d"] = [](const Node& n) { return dropout(n, "feature_dropout"); };
    t[nn + "dropout.Dropout2d"] = [](const Node& n) { return dropout(n, "feature_dropout"); };
    t[nn + "dropout.Dropout3d"] = [](const Node& n) { return dropout(n, "feature_dropout"); };
    t[nn + "dropout.AlphaDropout"] = [](const Node& n) { return dropout(n, "alpha_dropout"); };
    t[nn + "flatten.Flatten"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(int64_t start, as_int(n, "start_dim"));
      MLFX_ASSIGN(int64_t end, as_int(n, "end_dim"));
      return def("input.flatten(" + std::to_string(start) + ", " + std::to_string(end) + ")");
    };
    t[nn + "normalization.LayerNorm"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(std::string shape, as_ints(n, "normalized_shape", 0));
      MLFX_ASSIGN(std::string eps, as_float(n, "eps"));
      return def("torch.layer_norm(input, " + shape + ", " + tensor_or_none(n, "weight") + ", " +
                 tensor_or_none(n, "bias") + ", " + eps + ", True)");
    };
    t[nn + "normalization.GroupNorm"] = [](const Node& n) -> Result<std::string> {
      MLFX_ASSIGN(int64_t groups, as_int(n, "num_groups"));
      MLFX_ASSIGN(std::string eps, as_float(n, "eps"));
      return def("torch.group_norm(input, " + std::to_string(groups) + ", " + tensor_or_none(n, "weight") + ", " +
                 tensor_or_none(n, "bias") + ", " + eps + ", True)");
    };
    t[nn + "sparse.Embedding"] = [](const Node& n) -> Result<std::string> {
      if (!is_none(n, "max_norm")) return fail(Errc::kUnsupported, "Embedding with max_norm (renormalises its weight in place)");
      int64_t padding_idx = -1;
      if (!is_none(n, "padding_idx")) {
        MLFX_ASSIGN(padding_idx, as_int(n, "padding_idx"));
      }
      MLFX_ASSIGN(std::string scale, as_bool(n, "scale_grad_by_freq"));
      MLFX_ASSIGN(std::string sparse, as_bool(n, "sparse"));
      return def("torch.embedding(self.weight, input, " + std::to_string(padding_idx) + ", " + scale + ", " + sparse + ")");
    };
    t[nn + "container.Sequential"] = [](const Node& n) -> Result<std::string> {
      std::string s = "def forward(self, input: Tensor) -> Tensor:\n";
      for (const auto& c : n.j.value("children", json::Json::array())) {
        const std::string path = c.value("path", "");
        const std::string name = path.substr(path.rfind('.') + 1);
        if (name.find_first_of("'\\\n") != std::string::npos) return fail(Errc::kUnsupported, "child name " + name);
        s += "    input = getattr(self, '" + name + "').forward(input)\n";
      }
      return s + "    return input\n";
    };
    return t;
  }();
  return table;
}

std::string short_name(const std::string& cls) {
  std::string s = cls.substr(cls.rfind('.') + 1);
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

class Builder {
 public:
  explicit Builder(const RecoveredModel& model) : model_(model) {}

  std::optional<torch::jit::Module> build(const json::Json& node) {
    const std::string path = node.value("path", "");
    const std::string cls = node["class"].is_string() ? node["class"].get<std::string>() : "";
    if (node.value("none", false) || cls.empty()) {
      out_.unsupported.push_back({path, cls, "no module here (None or unreadable)"});
      return std::nullopt;
    }
    ++out_.classes[cls];
    const std::string address = node.value("address", "");
    if (auto it = built_.find(address); !address.empty() && it != built_.end()) return it->second;

    bool ok = true;
    std::vector<std::pair<std::string, torch::jit::Module>> children;
    for (const auto& c : node.value("children", json::Json::array())) {
      auto child = build(c);
      const std::string cp = c.value("path", "");
      if (child) children.emplace_back(cp.substr(cp.rfind('.') + 1), *child);
      else ok = false;
    }
    auto writer = forward_table().find(cls);
    if (writer == forward_table().end()) {
      out_.unsupported.push_back({path, cls, "not a torch.nn class with a known forward"});
      return std::nullopt;
    }
    if (!node.value("other_attributes", json::Json::array()).empty())
      out_.notes.push_back(path + ": attributes not restored: " + node["other_attributes"].dump());
    Result<std::string> source = writer->second(Node{node});
    if (!source) {
      out_.unsupported.push_back({path, cls, source.error().message()});
      return std::nullopt;
    }
    if (!ok) return std::nullopt;
    try {
      torch::jit::Module m(c10::QualifiedName("__torch__.mlfx_rehost." + short_name(cls) + "_" + std::to_string(counter_++)));
      m.register_attribute("training", c10::BoolType::get(), node.value("training", false));
      const std::string prefix = path.empty() ? "" : path + ".";
      const std::set<std::string> non_persistent = node.value("non_persistent_buffers", std::set<std::string>{});
      auto optional_tensor = c10::OptionalType::create(c10::TensorType::get());
      for (const char* kind : {"parameters", "buffers"}) {
        const bool is_buffer = std::string(kind) == "buffers";
        for (const auto& slot : node.value(kind, json::Json::array())) {
          const std::string name = slot.value("name", "");
          if (slot.value("none", true)) {
            m.register_attribute(name, optional_tensor, c10::IValue());
            continue;
          }
          auto t = model_.state.find(prefix + name);
          if (t == model_.state.end()) {
            out_.unsupported.push_back({path, cls, std::string(is_buffer ? "buffer " : "parameter ") + prefix + name +
                                                       " was not recovered"});
            return std::nullopt;
          }
          at::Tensor tensor = t->second;
          if (!is_buffer && tensor.is_floating_point() && !tensor.requires_grad()) tensor.set_requires_grad(true);
          if (is_buffer && non_persistent.count(name))
            m.register_attribute(name, c10::TensorType::get(), tensor);
          else
            m.register_parameter(name, tensor, is_buffer);
        }
      }
      for (auto& [name, child] : children) m.register_module(name, child);
      m.define(*source);
      if (!address.empty()) built_.emplace(address, m);
      return m;
    } catch (const std::exception& e) {
      std::string what = torch_error(e);
      out_.unsupported.push_back({path, cls, "TorchScript: " + what.substr(0, what.find('\n'))});
      return std::nullopt;
    }
  }

  TorchScriptBuild take() { return std::move(out_); }
  TorchScriptBuild out_;

 private:
  const RecoveredModel& model_;
  std::map<std::string, torch::jit::Module> built_;  // by the module's address: shared submodules
  int counter_ = 0;
};

}  // namespace

TorchScriptBuild build_torchscript(const RecoveredModel& model) {
  Builder b(model);
  auto root = b.build(model.architecture);
  TorchScriptBuild out = b.take();
  if (root && out.unsupported.empty()) out.module = std::move(*root);
  return out;
}

std::vector<std::string> supported_classes() {
  std::vector<std::string> v;
  for (const auto& [cls, writer] : forward_table()) v.push_back(cls);
  return v;
}

}  // namespace mlfx::rehost
