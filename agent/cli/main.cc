// mlfx-agent: the device-side command line. One registry of command groups (cli/command.h);
// each group lives in its own file.
#include <cstdio>

#include "cli/command.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/version.h"

int main(int argc, char** argv) {
  using namespace mlfx;
  // First thing: this process will hold the device's private key and the target's plaintext
  // memory; no core dump of it, and no other process of this user may read or trace it.
  if (auto st = protect_process(); !st) {
    std::fprintf(stderr, "mlfx-agent: error: cannot protect this process's memory: %s\n",
                 st.error().to_string().c_str());
    return 1;
  }
  CLI::App app{"mlfx-agent: capture the memory of ML processes as sealed evidence"};
  app.set_version_flag("--version", std::string("mlfx-agent ") + kToolVersion);
  app.require_subcommand(1);
  agent::cli::Registry registry;
  agent::cli::add_capture_commands(app, registry);
  agent::cli::add_spool_commands(app, registry);
  agent::cli::add_ship_command(app, registry);
  agent::cli::add_daemon_commands(app, registry);
  return registry.parse_and_run(app, argc, argv);
}
