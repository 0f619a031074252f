// `mlfx recover`: from a process image (an ELF core, a sealed bundle holding one, or a live
// process captured into memory first) to every model in the process, written as state_dict files plus its architecture, and a report.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"
#include "base/diagnostics.h"

namespace mlfx::recovery {

struct RecoverOptions {
  // An ELF core, an mlfx bundle with a "core" stream, or a whole-memory bundle ("memory",
  // "context" and the pagemaps of the processes captured with --pid).
  std::string input;
  // Without input: a live process, frozen while its memory is read. With a whole-memory
  // input: the process to recover (default: every one whose pagemap was captured).
  pid_t pid = 0;
  std::string out_dir;  // must not exist or be empty
  std::string lab_key;  // needed for bundles
  std::string trusted_devices_dir;
  // gdb's sysroot: where the mapped files the core left out are read from ("/" on the
  // captured host); empty: only the core.
  std::string sysroot;
  // A CUDA GPU core dump of the same process beside an ELF core (the driver's or cuda-gdb's);
  // a bundle brings its own (stream "gpu-core").
  std::string gpu_core;
  bool show_progress = true;
  // Memory and time the analysis of hostile memory may spend (report.json "limits").
  Limits limits;
};

// What a recovery found, typed for programs and the CLI; `report` is report.json itself
// (docs/outputs.md). Every string here came from evidence: print it through printable().
struct RecoveredModel {
  std::string directory;   // "models/<n>-<Class>", under the output directory
  std::string class_name;  // qualified class name
  uint64_t tensors = 0, parameters = 0;
  bool complete = false;   // every file written
};
struct Finding {
  std::string severity;    // "suspicious", ...
  std::string summary;
};
struct RecoverResult {
  json::Json report;
  int32_t pid = 0;
  std::string command, python_version;
  uint64_t gc_objects = 0, torch_modules = 0;
  bool torch_loaded = false;
  std::vector<RecoveredModel> models;
  std::vector<Finding> findings;
  size_t warnings = 0;
  std::optional<std::string> limit_exhausted;     // the analysis stopped here: results are partial
  std::optional<std::string> capture_incomplete;  // the bundle says its capture is partial
  bool identity_unverified = false;               // the bundle's signer is not bound to its device id
  // A whole-memory capture without --pid: each process recovered (pid and models above are
  // then the summary's: models of all of them, directories under processes/<pid>/).
  std::vector<RecoverResult> processes;
};

// Writes DIR/report.json and DIR/models/<n>-<Class>/{state_dict.safetensors, state_dict.pt,
// architecture.json}; returns what it found. Damage inside the image (unreadable objects,
// broken lists) gives partial results with diagnostics in the report; an input that is not
// a Python process image is an error. A spent budget (options.limits) ends the analysis with
// what it has (limit_exhausted). Module ownership cycles are findings.
Result<RecoverResult> recover(const RecoverOptions& options);

}  // namespace mlfx::recovery
