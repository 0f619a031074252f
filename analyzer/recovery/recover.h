// `mlfx recover`: from a process image (an ELF core, a sealed bundle holding one, or a live
// process captured into memory first) to every model in the process, written as state_dict files plus its architecture, and a report.
#pragma once

#include <sys/types.h>

#include <string>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"
#include "recovery/diagnostics.h"

namespace mlfx::recovery {

struct RecoverOptions {
  std::string input;    // an ELF core, or an mlfx bundle with a "core" stream
  pid_t pid = 0;        // instead of input: a live process, frozen while its memory is read
  std::string out_dir;  // must not exist or be empty
  std::string lab_key;  // needed for bundles
  std::string trusted_devices_dir;
  // gdb's sysroot: where the mapped files the core left out are read from ("/" on the
  // captured host); empty: only the core.
  std::string sysroot;
  bool show_progress = true;
  // Memory and time the analysis of hostile memory may spend (report.json "limits").
  Limits limits;
};

// Writes DIR/report.json and DIR/models/<n>-<Class>/{state_dict.safetensors, state_dict.pt,
// architecture.json}; returns the report. Damage inside the image (unreadable objects,
// broken lists) gives partial results with diagnostics in the report; an input that is not
// a Python process image is an error. A spent budget (options.limits) ends the analysis with
// what it has: report["limits"]["exhausted"] says so. Module ownership cycles are reported in
// report["findings"].
Result<json::Json> recover(const RecoverOptions& options);

}  // namespace mlfx::recovery
