// Path (a) of `mlfx rehost`: a runnable TorchScript module built in C++ from the recovered
// architecture, with no Python and no source code. It applies when every module in the tree is
// a standard torch.nn class whose forward we know (the table in torchscript_builder.cc) and the
// computation order is the containers' (Sequential). Each generated forward calls the same
// ATen operators, with the same arguments, as that class's forward in torch.nn does, so the
// outputs are bit-identical to the live model's.
#pragma once

#include <torch/script.h>

#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "rehost/recovered_model.h"

namespace mlfx::rehost {

struct Unsupported {
  std::string module;  // path in the tree ("" is the root)
  std::string cls;     // class qualname
  std::string reason;
};

struct TorchScriptBuild {
  std::optional<torch::jit::Module> module;  // set when everything was supported
  std::vector<Unsupported> unsupported;
  std::map<std::string, int> classes;        // class qualname -> instances in the tree
  std::vector<std::string> notes;            // what the analyst should know (attributes not kept)
};

TorchScriptBuild build_torchscript(const RecoveredModel& model);

// The torch.nn classes the builder knows, for messages and the report.
std::vector<std::string> supported_classes();

}  // namespace mlfx::rehost
