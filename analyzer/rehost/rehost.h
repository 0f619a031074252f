// `mlfx rehost`: turns a recovered model directory into a live, runnable model.
//   (a) TorchScript built from the architecture in C++ (torchscript_builder.h), no Python;
//   (b) otherwise, the lab's Python rebuilds the instance tree from classes of allowlisted
//       library modules or of the analyst's source (--code-path), never of a module the
//       evidence names: a torch.load-able full-model file and a TorchScript export
//       (python/mlfx_rehost.py, embedded in the binary). Python runs isolated (-I -B), in an
//       empty temporary working directory with a clean environment; rehost.json's
//       "executed_code" lists every file of code it ran with its SHA-256.
// Then, with verify, the rehosted TorchScript runs on reference inputs and its outputs are
// compared bit for bit with the reference outputs.
// No libtorch types here: the CLI includes this header.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::rehost {

struct RehostOptions {
  std::string model_dir, out_dir;
  std::vector<std::string> code_paths;  // path (b): the analyst's source, files or directories
  std::vector<std::string> allow_modules;  // path (b): library modules allowed beyond the
                                           // script's ALLOWED_MODULES
  bool verify = false;
  std::string reference;                // safetensors of input[.N] / output[.N] pairs; empty:
                                        // the tensors recovered from the process are replayed
  std::string python = "/usr/bin/python3";
  bool allow_python = true;             // false: path (a) only
  int threads = 0;                      // intra-op threads for verification; 0: libtorch's default
};

// Exit status of `mlfx rehost` beyond 0 (a model written and, if asked, verified) and 1.
inline constexpr int kExitNotRehostable = 3;  // neither path applies; rehost.json says what is missing
inline constexpr int kExitNotEquivalent = 4;  // written, but outputs differ from the reference

// What a rehost did, typed for the CLI; `report` is rehost.json itself (docs/outputs.md).
// Strings come from the evidence (class and module names): print them through printable().
struct RehostResult {
  json::Json report;
  std::string class_name;
  std::optional<std::string> path;         // "torchscript-from-architecture", "python-classes"; none: not rehosted
  std::optional<std::string> torchscript;  // file names in the output directory
  std::optional<std::string> full_model;
  struct Unsupported {
    std::string module, class_name, reason;  // why path (a) cannot build this module
  };
  std::vector<Unsupported> unsupported;
  std::vector<std::string> missing_classes;  // path (b): in no allowed module nor --code-path
  std::optional<std::string> python_error;
  struct Pair {
    std::string input, output;
    bool bit_identical = false;
  };
  bool verified = false;    // --verify ran (or was asked and had nothing to run)
  bool equivalent = false;  // every pair bit-identical
  std::vector<Pair> pairs;
};

// Writes OUT/rehost.json (and the model files) and returns what was done.
Result<RehostResult> rehost(const RehostOptions& o);

// Runs a TorchScript model file on every input[.N] in `reference` and compares the outputs bit
// for bit with output[.N]. The report lists each pair; "equivalent" is true when all match.
Result<json::Json> verify_against_reference(const std::string& torchscript, const std::string& reference, int threads);

// In the field there is no reference: every tensor `mlfx recover` saved from the process
// (tensors/loose.safetensors) the model accepts is run, and its output is searched for among
// them. Pairs found (the last input and output a serving process kept) match bit for bit.
Result<json::Json> verify_against_process(const std::string& torchscript, const std::string& loose, int threads);

}  // namespace mlfx::rehost
