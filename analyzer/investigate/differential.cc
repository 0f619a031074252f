#include "investigate/differential.h"

#include <ATen/Parallel.h>
#include <torch/script.h>

#include "exporters/safetensors_reader.h"
#include "mlfx/base/file.h"
#include "rehost/recovered_model.h"

namespace mlfx::investigate {

namespace {

constexpr int64_t kBatch = 256;

Result<at::Tensor> logits_of(torch::jit::Module& m, const at::Tensor& x, const std::string& what) {
  try {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> parts;
    for (int64_t i = 0; i < x.size(0); i += kBatch) {
      c10::IValue y = m.forward({x.slice(0, i, std::min(x.size(0), i + kBatch))});
      if (!y.isTensor()) return fail(Errc::kInvalidArgument, what + ": the output is not a tensor");
      parts.push_back(y.toTensor());
    }
    at::Tensor out = at::cat(parts);
    if (out.dim() != 2) return fail(Errc::kInvalidArgument, what + ": the output is not (batch, classes)");
    return out;
  } catch (const std::exception& e) {
    std::string w = rehost::torch_error(e);
    return fail(Errc::kInvalidArgument, what + " does not run on these inputs: " + w.substr(0, w.find('\n')));
  }
}

}  // namespace

Result<json::Json> differential(const DifferentialOptions& o) {
  MLFX_ASSIGN(torch::jit::Module a, rehost::load_torchscript(o.model_a));
  MLFX_ASSIGN(torch::jit::Module b, rehost::load_torchscript(o.model_b));
  if (o.threads > 0) at::set_num_threads(o.threads);
  a.eval();
  b.eval();
  json::Json sets = json::Json::array();
  for (const auto& path : o.inputs) {
    MLFX_ASSIGN(auto file, exporters::SafetensorsFile::read(path));
    const auto* xs = file.find("inputs");
    if (!xs) return fail(Errc::kInvalidArgument, path + " has no tensor named 'inputs'");
    at::Tensor x = rehost::to_tensor(file, *xs);
    if (x.dim() == 0 || x.size(0) == 0) return fail(Errc::kInvalidArgument, path + ": 'inputs' is empty");
    std::optional<at::Tensor> labels;
    if (const auto* ls = file.find("labels")) {
      labels = rehost::to_tensor(file, *ls).to(at::kLong).reshape({-1});
      if (labels->size(0) != x.size(0)) return fail(Errc::kInvalidArgument, path + ": 'labels' and 'inputs' differ in length");
    }
    MLFX_ASSIGN(at::Tensor la, logits_of(a, x, o.model_a));
    MLFX_ASSIGN(at::Tensor lb, logits_of(b, x, o.model_b));
    if (la.sizes() != lb.sizes()) return fail(Errc::kInvalidArgument, "the two models' outputs differ in shape");
    at::Tensor pa = la.argmax(1), pb = lb.argmax(1);
    at::Tensor disagree = pa.ne(pb);
    json::Json s = {{"inputs", path}, {"samples", x.size(0)},
                    {"disagreements", disagree.sum().item<int64_t>()},
                    {"agreement", 1.0 - disagree.to(at::kDouble).mean().item<double>()},
                    {"max_abs_logit_difference", (la.to(at::kDouble) - lb.to(at::kDouble)).abs().max().item<double>()}};
    if (labels) {
      s["accuracy_a"] = pa.eq(*labels).to(at::kDouble).mean().item<double>();
      s["accuracy_b"] = pb.eq(*labels).to(at::kDouble).mean().item<double>();
    }
    // Where the decisions went: (label by a -> label by b) counts, the flips a backdoor makes.
    std::map<std::string, int64_t> flips;
    json::Json listed = json::Json::array();
    for (int64_t i = 0; i < x.size(0); ++i) {
      const int64_t ya = pa[i].item<int64_t>(), yb = pb[i].item<int64_t>();
      if (ya == yb) continue;
      ++flips[std::to_string(ya) + "->" + std::to_string(yb)];
      if (listed.size() < o.max_listed) {
        json::Json d = {{"index", i}, {"a", ya}, {"b", yb}};
        if (labels) d["label"] = (*labels)[i].item<int64_t>();
        listed.push_back(std::move(d));
      }
    }
    std::map<std::string, int64_t> into_b;  // disagreements by b's label: a trigger's target stands out
    for (int64_t i = 0; i < x.size(0); ++i)
      if (pa[i].item<int64_t>() != pb[i].item<int64_t>()) ++into_b[std::to_string(pb[i].item<int64_t>())];
    s["flips"] = flips;
    s["disagreements_by_b_label"] = into_b;
    s["listed"] = listed;
    sets.push_back(std::move(s));
  }
  MLFX_TRY(make_output_dir(o.out_dir, {"differential.json"}));
  json::Json report = {{"scan", "differential"}, {"model_a", o.model_a}, {"model_b", o.model_b}, {"input_sets", sets},
                       {"threads", at::get_num_threads()}};
  MLFX_TRY(write_new_file(o.out_dir + "/differential.json", report.dump(1) + "\n", 0640));
  return report;
}

}  // namespace mlfx::investigate
