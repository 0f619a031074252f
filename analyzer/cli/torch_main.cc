// mlfx-torch: the part of mlfx that loads libtorch. `mlfx rehost ...` and `mlfx scan ...`
// run here (mlfx hands over its argv), so that every other command starts without libtorch.
#include <cstdio>

#include "cli/torch_commands.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/version.h"

int main(int argc, char** argv) {
  using namespace mlfx;
  if (auto st = protect_process(); !st) std::fprintf(stderr, "mlfx: warning: %s\n", st.error().to_string().c_str());
  CLI::App app{"mlfx (libtorch commands): rehost recovered models and investigate them"};
  app.name("mlfx");
  app.set_version_flag("--version", std::string("mlfx ") + kToolVersion);
  app.require_subcommand(1);
  cli::Registry registry;
  cli::add_torch_commands(app, registry, &cli::torch_runners());
  return registry.parse_and_run(app, argc, argv);
}
