#include "rehost/rehost.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "exporters/safetensors_reader.h"
#include "mlfx/base/file.h"
#include "mlfx/base/subprocess.h"
#include "mlfx/base/version.h"
#include "rehost/python_script.h"
#include "rehost/recovered_model.h"
#include "rehost/torchscript_builder.h"
#include <torch/version.h>
#include <ATen/Parallel.h>

namespace mlfx::rehost {

namespace {

constexpr const char* kTorchScriptFile = "model.torchscript.pt";

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// Every state_dict entry of the recovered model, read back from the saved module, bit for bit.
json::Json compare_state(const torch::jit::Module& m, const RecoveredModel& model) {
  std::map<std::string, at::Tensor> saved;
  for (const auto& p : m.named_parameters(true)) saved[p.name] = p.value;
  for (const auto& b : m.named_buffers(true)) saved[b.name] = b.value;
  json::Json differing = json::Json::array();
  for (const auto& key : model.state_keys) {
    auto it = saved.find(key);
    if (it == saved.end() || !same_bits(it->second, model.state.at(key))) differing.push_back(key);
  }
  return {{"equal", differing.empty()}, {"differing", differing}, {"entries", model.state_keys.size()}};
}

// Path (a). Returns the report part; writes OUT/model.torchscript.pt when it applies.
Result<json::Json> torchscript_path(const RecoveredModel& model, const std::string& out_dir, bool& written) {
  TorchScriptBuild b = build_torchscript(model);
  json::Json r = {{"applies", b.module.has_value()}, {"classes", b.classes}, {"notes", b.notes}};
  json::Json unsupported = json::Json::array();
  for (const auto& u : b.unsupported) unsupported.push_back({{"module", u.module}, {"class", u.cls}, {"reason", u.reason}});
  r["unsupported"] = unsupported;
  if (!b.module) return r;
  const std::string path = out_dir + "/" + kTorchScriptFile, tmp = path + ".tmp";
  try {
    b.module->save(tmp);
    if (rename(tmp.c_str(), path.c_str()) != 0) {
      unlink(tmp.c_str());
      return fail(Errc::kIo, "cannot write " + path + ": " + std::strerror(errno));
    }
    // Check the artifact itself, as an analyst will load it.
    torch::jit::Module loaded = torch::jit::load(path);
    r["state_dict"] = compare_state(loaded, model);
  } catch (const c10::Error& e) {
    unlink(tmp.c_str());
    unlink(path.c_str());
    return fail(Errc::kIo, "saving the TorchScript model failed: " + first_line(e.what_without_backtrace()));
  }
  written = true;
  r["file"] = kTorchScriptFile;
  return r;
}

// Path (b): the embedded script, run by the lab's Python.
json::Json python_path(const RehostOptions& o, bool& written) {
  std::vector<std::string> argv = {o.python, "-", o.model_dir, "--out", o.out_dir};
  for (const auto& p : o.code_paths) {
    argv.push_back("--code-path");
    argv.push_back(p);
  }
  auto run = run_process(argv, kRehostPython);
  if (!run) return {{"applies", false}, {"error", "cannot run " + o.python + ": " + run.error().to_string()}};
  json::Json r;
  const std::string& out = run->out;
  const size_t last = out.find_last_of('{') == std::string::npos ? std::string::npos : out.rfind("\n{");
  r = json::Json::parse(last == std::string::npos ? out : out.substr(last + 1), nullptr, false);
  if (!r.is_object()) {
    std::string tail = run->err.size() > 2000 ? run->err.substr(run->err.size() - 2000) : run->err;
    return {{"applies", false}, {"error", o.python + " exited " + std::to_string(run->exit_code) + ": " + tail}};
  }
  r["exit_code"] = run->exit_code;
  r["applies"] = run->exit_code == 0;
  written = run->exit_code == 0;
  return r;
}

}  // namespace

Result<json::Json> verify_against_reference(const std::string& torchscript, const std::string& reference, int threads) {
  MLFX_ASSIGN(auto ref, exporters::SafetensorsFile::read(reference));
  if (threads > 0) at::set_num_threads(threads);
  json::Json pairs = json::Json::array();
  bool all = true;
  try {
    MLFX_ASSIGN(torch::jit::Module m, load_torchscript(torchscript));
    torch::NoGradGuard no_grad;
    for (const auto& t : ref.tensors()) {
      if (t.name.rfind("input", 0) != 0) continue;
      const std::string suffix = t.name.substr(5);
      const auto* expected = ref.find("output" + suffix);
      if (!expected) continue;
      at::Tensor input = to_tensor(ref, t), want = to_tensor(ref, *expected);
      c10::IValue got = m.forward({input});
      json::Json p = {{"input", t.name}, {"output", expected->name}, {"input_shape", input.sizes().vec()}};
      if (!got.isTensor()) {
        p["bit_identical"] = false;
        p["error"] = "the model's output is not a single tensor";
      } else {
        at::Tensor y = got.toTensor();
        p["output_shape"] = y.sizes().vec();
        p["bit_identical"] = same_bits(y, want);
        if (y.sizes() == want.sizes() && y.is_floating_point() && want.is_floating_point())
          p["max_abs_difference"] = (y.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
      }
      all = all && p["bit_identical"].get<bool>();
      pairs.push_back(std::move(p));
    }
  } catch (const c10::Error& e) {
    return fail(Errc::kBadFormat, "running " + torchscript + " on " + reference + " failed: " +
                                      first_line(e.what_without_backtrace()));
  }
  if (pairs.empty())
    return fail(Errc::kInvalidArgument, reference + " holds no input/output pair (tensors named input and output, "
                                                    "or input.N and output.N)");
  json::Json r = {{"reference", reference}, {"pairs", pairs}, {"equivalent", all}};
  r["threads"] = at::get_num_threads();
  return r;
}

Result<json::Json> rehost(const RehostOptions& o) {
  if (o.verify && o.reference.empty())
    return fail(Errc::kInvalidArgument, "--verify needs --reference FILE.safetensors with input/output tensors");
  MLFX_ASSIGN(RecoveredModel model, load_recovered_model(o.model_dir));
  MLFX_TRY(make_output_dir(o.out_dir, {"rehost.json", kTorchScriptFile, "model.full.pt"}));
  json::Json report = {{"tool", {{"name", "mlfx"}, {"version", kToolVersion}}},
                       {"libtorch_version", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR)},
                       {"model_dir", o.model_dir},
                       {"class", model.architecture["class"]},
                       {"exact_layout", model.exact_layout}};
  bool written = false;
  MLFX_ASSIGN(json::Json a, torchscript_path(model, o.out_dir, written));
  report["torchscript_from_architecture"] = a;
  if (written) {
    report["path"] = "torchscript-from-architecture";
    report["torchscript"] = kTorchScriptFile;
    report["full_model"] = nullptr;
  } else if (o.allow_python) {
    json::Json b = python_path(o, written);
    report["python_classes"] = b;
    report["path"] = written ? json::Json("python-classes") : json::Json(nullptr);
    report["torchscript"] = written && b.value("torchscript", json::Json()).is_string() ? b["torchscript"] : json::Json(nullptr);
    report["full_model"] = written ? b.value("full_model", json::Json()) : json::Json(nullptr);
  } else {
    report["path"] = nullptr;
  }
  if (o.verify) {
    if (report["torchscript"].is_string()) {
      MLFX_ASSIGN(report["verification"],
                  verify_against_reference(o.out_dir + "/" + report["torchscript"].get<std::string>(), o.reference, o.threads));
    } else {
      report["verification"] = {{"equivalent", false}, {"error", "no TorchScript model to run"}};
    }
  }
  MLFX_TRY(write_new_file(o.out_dir + "/rehost.json", report.dump(1) + "\n", 0640));
  return report;
}

}  // namespace mlfx::rehost
