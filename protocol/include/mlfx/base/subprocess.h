// Runs a helper program (the lab's Python, a browser) and collects what it prints.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx {

struct ProcessResult {
  int exit_code = -1;  // the exit status; 128 + N when killed by signal N
  std::string out;     // standard output, whole
  std::string err;     // the last 64 KiB of standard error
};

struct ProcessOptions {
  std::string cwd;                              // working directory; empty: the caller's
  std::optional<std::vector<std::string>> env;  // "NAME=value" entries, the whole environment;
                                                // none: the caller's environment
};

// Runs argv[0] (looked up in the caller's PATH when it has no slash) with `input` on its
// standard input. Fails only when it cannot be started; a non-zero exit is in the result.
Result<ProcessResult> run_process(const std::vector<std::string>& argv, const std::string& input = "",
                                  const ProcessOptions& options = {});

// Runs argv[0] with the caller's standard error and the given descriptors of this process
// as the child's (parent fd -> child fd, e.g. an in-memory file as its standard output), and
// waits for it. Returns its exit status (128 + N when killed by signal N).
struct DescriptorMap {
  int parent_fd;
  int child_fd;
};
Result<int> run_with_descriptors(const std::vector<std::string>& argv, const std::vector<DescriptorMap>& fds);

// Another program of mlfx: beside this executable (installed in bin/, or the build tree's
// sibling folders agent/ and analyzer/), or in ../libexec/mlfx; never looked up in PATH, so
// that the lab runs the build it trusts.
Result<std::string> find_companion_program(const std::string& name);

}  // namespace mlfx
