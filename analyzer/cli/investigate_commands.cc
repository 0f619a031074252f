#include "cli/investigate_commands.h"

#include <cstdio>
#include <iostream>
#include <memory>

#include "rehost/rehost.h"

namespace mlfx::cli {

namespace {

int report_error(const char* command, const Error& e) {
  std::fprintf(stderr, "mlfx %s: error: %s\n", command, e.to_string().c_str());
  return 1;
}

int run_rehost(const rehost::RehostOptions& o, bool json_out) {
  auto r = rehost::rehost(o);
  if (!r) return report_error("rehost", r.error());
  const json::Json& rep = *r;
  if (json_out) std::cout << rep.dump(2) << "\n";
  const bool written = rep["path"].is_string();
  if (!json_out) {
    if (written) {
      std::printf("rehosted %s via %s\n", rep["class"].get<std::string>().c_str(), rep["path"].get<std::string>().c_str());
      if (rep["torchscript"].is_string()) std::printf("  TorchScript: %s/%s\n", o.out_dir.c_str(), rep["torchscript"].get<std::string>().c_str());
      if (rep["full_model"].is_string()) std::printf("  full model (torch.load): %s/%s\n", o.out_dir.c_str(), rep["full_model"].get<std::string>().c_str());
    }
    if (rep.contains("verification")) {
      const auto& v = rep["verification"];
      for (const auto& p : v.value("pairs", json::Json::array()))
        std::printf("  %s -> %s: %s\n", p["input"].get<std::string>().c_str(), p["output"].get<std::string>().c_str(),
                    p["bit_identical"].get<bool>() ? "bit-identical" : "DIFFERENT");
    }
    std::printf("wrote %s/rehost.json\n", o.out_dir.c_str());
  }
  if (!written) {
    std::fprintf(stderr, "mlfx rehost: %s cannot be rehosted here:\n", rep["class"].dump().c_str());
    for (const auto& u : rep["torchscript_from_architecture"]["unsupported"])
      std::fprintf(stderr, "  TorchScript from the architecture: %s (%s): %s\n", u["module"].get<std::string>().c_str(),
                   u["class"].get<std::string>().c_str(), u["reason"].get<std::string>().c_str());
    if (rep.contains("python_classes")) {
      const auto& p = rep["python_classes"];
      for (const auto& c : p.value("missing_classes", json::Json::array()))
        std::fprintf(stderr, "  Python: class %s is not importable; pass its source with --code-path\n", c.dump().c_str());
      if (p.contains("error") && p["error"].is_string())
        std::fprintf(stderr, "  Python: %s\n", p["error"].get<std::string>().c_str());
    }
    return rehost::kExitNotRehostable;
  }
  if (rep.contains("verification") && !rep["verification"].value("equivalent", false)) {
    std::fprintf(stderr, "mlfx rehost: the rehosted model's outputs differ from the reference\n");
    return rehost::kExitNotEquivalent;
  }
  return 0;
}

}  // namespace

void add_investigate_commands(CLI::App& app, Commands& out) {
  auto ro = std::make_shared<rehost::RehostOptions>();
  auto json_out = std::make_shared<bool>(false);
  auto* rh = app.add_subcommand("rehost", "make a recovered model live: TorchScript built from its architecture "
                                           "(standard torch.nn), else the lab's Python with the model's classes");
  rh->add_option("model_dir", ro->model_dir, "a model directory of `mlfx recover` (models/<n>-<Class>)")
      ->required()->check(CLI::ExistingDirectory);
  rh->add_option("--out", ro->out_dir, "output directory (new or empty)")->required();
  rh->add_option("--code-path", ro->code_paths, "the model's Python source (a .py file or a directory), for classes "
                                                "that are not standard torch.nn; repeatable")
      ->check(CLI::ExistingPath);
  rh->add_flag("--verify", ro->verify, "run the rehosted model on --reference inputs and compare outputs bit for bit");
  rh->add_option("--reference", ro->reference, "safetensors file of input/output (or input.N/output.N) tensors")
      ->check(CLI::ExistingFile);
  rh->add_option("--python", ro->python, "Python with torch for path (b) (default /usr/bin/python3)");
  rh->add_flag("!--no-python", ro->allow_python, "only the TorchScript-from-architecture path");
  rh->add_option("--threads", ro->threads, "intra-op threads when verifying (default: libtorch's)")
      ->check(CLI::NonNegativeNumber);
  rh->add_flag("--json", *json_out, "print rehost.json");
  out.emplace_back(rh, [ro, json_out] { return run_rehost(*ro, *json_out); });
}

}  // namespace mlfx::cli
