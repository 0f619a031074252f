#include "rehost/rehost.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "exporters/safetensors_reader.h"
#include "mlfx/base/file.h"
#include "mlfx/crypto/hash.h"
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
  } catch (const std::exception& e) {
    unlink(tmp.c_str());
    unlink(path.c_str());
    return fail(Errc::kIo, "saving the TorchScript model failed: " + torch_error(e));
  }
  written = true;
  r["file"] = kTorchScriptFile;
  return r;
}

// How the lab's Python runs path (b): -I keeps the script's folder, the working directory, the
// user site and PYTHON* variables off sys.path; -B writes no bytecode. It runs in an empty
// temporary working directory with only these variables, so nothing of the analyst's folder
// (evidence may be opened there) or shell puts code on its path.
const std::vector<std::string> kPythonFlags = {"-I", "-B", "-"};
constexpr const char* kPythonPath = "PATH=/usr/local/bin:/usr/bin:/bin";

// A new empty directory, removed with whatever was left in it.
struct TempDir {
  std::string path;
  static Result<TempDir> create() {
    std::error_code ec;
    std::string pattern = (std::filesystem::temp_directory_path(ec) / "mlfx-rehost-XXXXXX").string();
    if (ec || !mkdtemp(pattern.data())) return fail(Errc::kIo, "cannot create a temporary directory: " + std::string(std::strerror(errno)));
    return TempDir{pattern};
  }
  TempDir(std::string p) : path(std::move(p)) {}
  TempDir(TempDir&& o) noexcept : path(std::move(o.path)) { o.path.clear(); }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

// The interpreter's absolute path: as given with a slash, else looked up in PATH.
Result<std::string> find_program(const std::string& name) {
  std::error_code ec;
  if (name.find('/') != std::string::npos) return std::filesystem::absolute(name, ec).string();
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  for (size_t b = 0, e; b <= dirs.size(); b = e + 1) {
    e = dirs.find(':', b);
    if (e == std::string::npos) e = dirs.size();
    const std::string candidate = (e > b ? dirs.substr(b, e - b) : ".") + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return std::filesystem::absolute(candidate, ec).string();
  }
  return fail(Errc::kNotFound, name + " is not in PATH");
}

std::string absolute(const std::string& p) {
  std::error_code ec;
  return std::filesystem::absolute(p, ec).string();
}

// What runs in path (b) besides the analyst's files, as the binary knows it.
json::Json python_facts(const std::string& python, const std::vector<std::string>& env) {
  std::error_code ec;
  const std::string real = std::filesystem::canonical(python, ec).string();
  auto bytes = read_small_file(ec ? python : real, size_t{1} << 30);
  json::Json names = json::Json::array();
  for (const auto& e : env) names.push_back(e.substr(0, e.find('=')));
  json::Json args(std::vector<std::string>(kPythonFlags.begin(), kPythonFlags.end()));
  return {{"python_ran", true},
          {"interpreter", {{"path", python}, {"sha256", bytes ? json::Json(crypto::sha256_hex(as_bytes(*bytes))) : json::Json(nullptr)},
                           {"arguments", args}, {"environment", names}}},
          {"script", {{"name", "mlfx_rehost.py, embedded in mlfx"},
                      {"sha256", crypto::sha256_hex(as_bytes(std::string_view(kRehostPython, sizeof kRehostPython - 1)))}}}};
}

// The script's own account (the files it loaded, how it ran) joins the binary's.
void merge_executed(json::Json& executed, json::Json& script_report) {
  if (!script_report.contains("executed_code") || !script_report["executed_code"].is_object()) {
    executed["code_files"] = nullptr;
    executed["note"] = "the script reported nothing: which files of code it ran is not known";
    return;
  }
  json::Json x = std::move(script_report["executed_code"]);
  script_report.erase("executed_code");
  for (const char* k : {"executable", "version", "flags", "sys_path", "working_directory"})
    executed["interpreter"][k] = x["interpreter"].value(k, json::Json());
  for (const char* k : {"code_files", "library_modules", "allowed_modules", "allowed_modules_added"})
    executed[k] = x.value(k, json::Json());
}

// Path (b): the embedded script, run by the lab's Python, isolated.
json::Json python_path(const RehostOptions& o, bool& written, json::Json& executed) {
  auto python = find_program(o.python);
  if (!python) return {{"applies", false}, {"error", "cannot run " + o.python + ": " + python.error().to_string()}};
  auto cwd = TempDir::create();
  if (!cwd) return {{"applies", false}, {"error", cwd.error().to_string()}};
  const std::vector<std::string> env = {kPythonPath, "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "HOME=" + cwd->path,
                                        "TMPDIR=" + cwd->path};
  std::vector<std::string> argv = {*python};
  argv.insert(argv.end(), kPythonFlags.begin(), kPythonFlags.end());
  for (const auto& a : {absolute(o.model_dir), std::string("--out"), absolute(o.out_dir)}) argv.push_back(a);
  for (const auto& p : o.code_paths) argv.insert(argv.end(), {"--code-path", absolute(p)});
  for (const auto& m : o.allow_modules) argv.insert(argv.end(), {"--allow-module", m});
  executed = python_facts(*python, env);
  auto run = run_process(argv, kRehostPython, {cwd->path, env});
  if (!run) return {{"applies", false}, {"error", "cannot run " + *python + ": " + run.error().to_string()}};
  json::Json r;
  const std::string& out = run->out;
  const size_t last = out.find_last_of('{') == std::string::npos ? std::string::npos : out.rfind("\n{");
  r = json::Json::parse(last == std::string::npos ? out : out.substr(last + 1), nullptr, false);
  merge_executed(executed, r);
  if (!r.is_object()) {
    std::string tail = run->err.size() > 2000 ? run->err.substr(run->err.size() - 2000) : run->err;
    return {{"applies", false}, {"error", *python + " exited " + std::to_string(run->exit_code) + ": " + tail}};
  }
  r["exit_code"] = run->exit_code;
  r["applies"] = run->exit_code == 0;
  written = run->exit_code == 0;
  return r;
}

// --allow-module names a module: dotted Python identifiers, nothing a path or a shell could use.
Status check_module_names(const std::vector<std::string>& names) {
  for (const auto& n : names) {
    bool ok = !n.empty() && n.size() <= 256;
    for (size_t b = 0, e; ok && b <= n.size(); b = e + 1) {
      e = n.find('.', b);
      if (e == std::string::npos) e = n.size();
      ok = e > b && !std::isdigit(static_cast<unsigned char>(n[b])) &&
           std::all_of(n.begin() + b, n.begin() + e, [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
    }
    if (!ok)
      return fail(Errc::kInvalidArgument, "--allow-module '" + n + "' is not a module name (dotted Python identifiers, "
                                          "e.g. torchvision.transforms)");
  }
  return {};
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
  } catch (const std::exception& e) {
    return fail(Errc::kBadFormat, "running " + torchscript + " on " + reference + " failed: " +
                                      torch_error(e));
  }
  if (pairs.empty())
    return fail(Errc::kInvalidArgument, reference + " holds no input/output pair (tensors named input and output, "
                                                    "or input.N and output.N)");
  json::Json r = {{"reference", reference}, {"pairs", pairs}, {"equivalent", all}};
  r["threads"] = at::get_num_threads();
  return r;
}

Result<json::Json> verify_against_process(const std::string& torchscript, const std::string& loose, int threads) {
  MLFX_ASSIGN(auto file, exporters::SafetensorsFile::read(loose));
  if (threads > 0) at::set_num_threads(threads);
  MLFX_ASSIGN(torch::jit::Module m, load_torchscript(torchscript));
  std::vector<std::pair<std::string, at::Tensor>> all;
  for (const auto& t : file.tensors()) all.emplace_back(t.name, to_tensor(file, t));
  json::Json pairs = json::Json::array(), ran = json::Json::array();
  torch::NoGradGuard no_grad;
  // Every tensor the model accepts is a candidate input; a candidate output is a tensor of the
  // result's dtype and shape. A pair is a match only bit for bit.
  for (const auto& [in_name, input] : all) {
    if (input.dim() == 0 || input.numel() > (int64_t{1} << 24)) continue;
    at::Tensor y;
    try {
      c10::IValue out = m.forward({input});
      if (!out.isTensor()) continue;
      y = out.toTensor();
    } catch (const std::exception&) {
      continue;  // not an input of this model
    }
    ran.push_back({{"input", in_name}, {"input_shape", input.sizes().vec()}, {"output_shape", y.sizes().vec()}});
    for (const auto& [out_name, candidate] : all)
      if (out_name != in_name && candidate.sizes() == y.sizes() && candidate.scalar_type() == y.scalar_type() &&
          same_bits(candidate, y))
        pairs.push_back({{"input", in_name}, {"output", out_name}, {"input_shape", input.sizes().vec()},
                         {"output_shape", y.sizes().vec()}, {"bit_identical", true}});
  }
  json::Json r = {{"reference", loose}, {"source", "tensors recovered from the captured process"},
                  {"inputs_accepted", ran}, {"pairs", pairs}, {"equivalent", !pairs.empty()}};
  if (pairs.empty())
    r["note"] = ran.empty() ? "no recovered tensor is an input this model accepts"
                            : "the model accepts some recovered tensors, but none of its outputs on them is in the process";
  r["threads"] = at::get_num_threads();
  return r;
}

namespace {

std::optional<std::string> optional_string(const json::Json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? std::optional<std::string>(it->get<std::string>()) : std::nullopt;
}

// The typed view of the rehost.json this file just built.
RehostResult summarize(json::Json report) {
  RehostResult r;
  r.class_name = report.value("class", "");
  r.path = optional_string(report, "path");
  r.torchscript = optional_string(report, "torchscript");
  r.full_model = optional_string(report, "full_model");
  for (const auto& u : report["torchscript_from_architecture"].value("unsupported", json::Json::array()))
    r.unsupported.push_back({u.value("module", ""), u.value("class", ""), u.value("reason", "")});
  if (const auto it = report.find("python_classes"); it != report.end() && it->is_object()) {
    for (const auto& c : it->value("missing_classes", json::Json::array()))
      r.missing_classes.push_back(c.is_string() ? c.get<std::string>() : c.dump());
    r.python_error = optional_string(*it, "error");
  }
  if (const auto it = report.find("verification"); it != report.end() && it->is_object()) {
    r.verified = true;
    r.equivalent = it->value("equivalent", false);
    for (const auto& p : it->value("pairs", json::Json::array()))
      r.pairs.push_back({p.value("input", ""), p.value("output", ""), p.value("bit_identical", false)});
  }
  r.report = std::move(report);
  return r;
}

}  // namespace

Result<RehostResult> rehost(const RehostOptions& o) {
  // Without a reference, the tensors the recovery found in the captured process are replayed.
  const std::string loose = o.model_dir + "/../../tensors/loose.safetensors";
  if (o.verify && o.reference.empty() && access(loose.c_str(), R_OK) != 0)
    return fail(Errc::kInvalidArgument, "--verify needs --reference FILE.safetensors with input/output tensors (this "
                                        "recovery saved no tensors from the process to replay)");
  MLFX_TRY(check_module_names(o.allow_modules));
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
    report["executed_code"] = {{"python_ran", false}, {"note", "TorchScript built in C++ from the architecture"}};
  } else if (o.allow_python) {
    json::Json b = python_path(o, written, report["executed_code"]);
    report["python_classes"] = b;
    report["path"] = written ? json::Json("python-classes") : json::Json(nullptr);
    report["torchscript"] = written && b.value("torchscript", json::Json()).is_string() ? b["torchscript"] : json::Json(nullptr);
    report["full_model"] = written ? b.value("full_model", json::Json()) : json::Json(nullptr);
  } else {
    report["path"] = nullptr;
    report["executed_code"] = {{"python_ran", false}, {"note", "--no-python"}};
  }
  if (o.verify) {
    if (report["torchscript"].is_string()) {
      const std::string ts = o.out_dir + "/" + report["torchscript"].get<std::string>();
      if (!o.reference.empty()) {
        MLFX_ASSIGN(report["verification"], verify_against_reference(ts, o.reference, o.threads));
      } else {
        MLFX_ASSIGN(report["verification"], verify_against_process(ts, loose, o.threads));
      }
    } else {
      report["verification"] = {{"equivalent", false}, {"error", "no TorchScript model to run"}};
    }
  }
  MLFX_TRY(write_new_file(o.out_dir + "/rehost.json", report.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n", 0640));
  return summarize(std::move(report));
}

}  // namespace mlfx::rehost
