// mlfx: the lab-side command line. One registry of command groups (command.h); each group
// lives in its own file. rehost and scan run in mlfx-torch, the one program that loads libtorch.
#include <cstdio>

#include "cli/command.h"
#include "cli/torch_commands.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/version.h"

int main(int argc, char** argv) {
  using namespace mlfx;
  // Keys and decrypted evidence stay out of core dumps, swap and other processes of this user.
  if (auto st = protect_process(); !st) std::fprintf(stderr, "mlfx: warning: %s\n", st.error().to_string().c_str());
  CLI::App app{"mlfx: verify, open and analyse sealed memory evidence of ML processes"};
  app.set_version_flag("--version", std::string("mlfx ") + kToolVersion);
  app.require_subcommand(1);
  cli::Registry registry;
  cli::add_keys_commands(app, registry);
  cli::add_ca_commands(app, registry);
  cli::add_bundle_commands(app, registry);
  cli::add_recover_command(app, registry);
  cli::add_serve_command(app, registry);
  cli::add_torch_commands(app, registry, nullptr);
  cli::add_report_command(app, registry);
  cli::add_kernel_commands(app, registry);
  cli::add_request_commands(app, registry);
  return registry.parse_and_run(app, argc, argv);
}
