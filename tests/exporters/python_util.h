// Running Debian's Python (/usr/bin/python3, the one with python3-torch and numpy; the first
// python3 on PATH may be a pyenv interpreter without them) from the exporter tests.
#pragma once

#include <unistd.h>

#include <string>

#include "test_util.h"

namespace mlfx::exporters::testing {

inline constexpr const char* kSystemPython = "/usr/bin/python3";

// check_exports.py in the source tree.
inline std::string check_script() { return std::string(MLFX_EXPORTERS_TEST_DIR) + "/check_exports.py"; }

inline bool python_has(const std::string& module) {
  if (access(kSystemPython, X_OK) != 0) return false;
  return mlfx::testing::run(std::string(kSystemPython) + " -c 'import " + module + "'").exit_code == 0;
}

// Writes `code` to a file in `dir` and runs it with the system Python and `args`.
inline mlfx::testing::CommandResult run_python(const mlfx::testing::TempDir& dir,
                                               const std::string& code,
                                               const std::string& args = "") {
  const std::string path = dir / "script.py";
  mlfx::testing::write_file(path, code);
  return mlfx::testing::run(std::string(kSystemPython) + " " + path + " " + args);
}

}  // namespace mlfx::exporters::testing
