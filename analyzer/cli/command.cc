#include "cli/command.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "mlfx/base/printable.h"
#include "mlfx/base/subprocess.h"

namespace mlfx::cli {

int report_error(const std::string& command, const Error& e) {
  std::fprintf(stderr, "mlfx %s: error: %s\n", command.c_str(), printable(e.to_string()).c_str());
  return kExitFailure;
}

std::string command_path(const CLI::App* app) {
  std::string path;
  for (const CLI::App* a = app; a && a->get_parent(); a = a->get_parent())
    path = a->get_name() + (path.empty() ? "" : " " + path);
  return path;
}

namespace {

// The same argv, run by mlfx-torch (beside this program, or in ../libexec/mlfx when installed).
int run_in_torch_helper(const std::string& command, char** argv) {
  auto helper = find_companion_program("mlfx-torch");
  if (!helper) {
    std::fprintf(stderr,
                 "mlfx %s: error: %s; this command runs in mlfx-torch, the part of mlfx that loads libtorch "
                 "(built with -DMLFX_WITH_LIBTORCH=ON, installed in <prefix>/libexec/mlfx)\n",
                 command.c_str(), helper.error().to_string().c_str());
    return kExitFailure;
  }
  std::vector<char*> args{const_cast<char*>(helper->c_str())};
  for (char** a = argv + 1; *a; ++a) args.push_back(*a);
  args.push_back(nullptr);
  std::fflush(nullptr);
  execv(helper->c_str(), args.data());
  std::fprintf(stderr, "mlfx %s: error: cannot run %s: %s\n", command.c_str(), helper->c_str(), std::strerror(errno));
  return kExitFailure;
}

}  // namespace

int Registry::parse_and_run(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  for (const Command& c : commands_) {
    if (!c.app->parsed()) continue;
    const std::string name = command_path(c.app);
    if (c.runs == Runs::kInTorchHelper) return run_in_torch_helper(name, argv);
    try {  // libtorch and the JSON library report by exception: a clean failure, not an abort
      return c.run();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mlfx %s: error: %s\n", name.c_str(), printable(e.what()).c_str());
      return kExitFailure;
    }
  }
  return kExitUsage;
}

}  // namespace mlfx::cli
