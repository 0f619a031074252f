// The analyzer's command registry: each command group (keys, ca, bundle, recover, serve,
// report, rehost/scan) adds its subcommands and what to run for each; main() parses and
// runs the one that was given. Only the CLI turns errors into exit codes:
//   0 success, 1 failure (the message says what failed and what to do), 2 usage error,
//   3 `recover` found no model (report.json is still written), 4 `recover` stopped at
//   --memory-limit/--time-limit (partial results), 5 `bundle verify`: intact but identity
//   unverified (no trust store binds the signing key to the manifest's device id).
// Every string that comes from evidence is printed through printable() / printable_json().
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mlfx/base/result.h"

namespace mlfx::cli {

inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNoModels = 3;
inline constexpr int kExitPartial = 4;
inline constexpr int kExitIdentityUnverified = 5;

// Prints "mlfx COMMAND: error: MESSAGE" (evidence-borne text made printable); returns 1.
int report_error(const std::string& command, const Error& e);

// Where a command runs: in this process, or in `mlfx-torch` (rehost, scan), the one program
// that loads libtorch, so that every other command starts in milliseconds.
enum class Runs { kHere, kInTorchHelper };

struct Command {
  CLI::App* app;              // a leaf subcommand, e.g. "bundle verify"
  std::function<int()> run;   // after parsing: its options are filled in
  Runs runs = Runs::kHere;
};

class Registry {
 public:
  void add(CLI::App* app, std::function<int()> run, Runs runs = Runs::kHere) {
    commands_.push_back({app, std::move(run), runs});
  }
  // Parses argv and runs the given command (or hands argv to mlfx-torch for the commands
  // that need libtorch); returns the exit status.
  int parse_and_run(CLI::App& app, int argc, char** argv);

 private:
  std::vector<Command> commands_;
};

// "keys gen", "scan neural-cleanse": the command's name under the program.
std::string command_path(const CLI::App* app);

// --trusted-devices, for verify, open, recover and report.
inline constexpr const char* kTrustedDevicesHelp =
    "trust store that binds device ids to keys: the lab CA directory (mlfx ca), or a folder of "
    "<device-id>.pub device keys. Without it the signer's identity is unverified";

// The command groups, one file each.
void add_keys_commands(CLI::App& app, Registry& registry);
void add_ca_commands(CLI::App& app, Registry& registry);
void add_bundle_commands(CLI::App& app, Registry& registry);
void add_recover_command(CLI::App& app, Registry& registry);
void add_serve_command(CLI::App& app, Registry& registry);
void add_report_command(CLI::App& app, Registry& registry);
void add_kernel_commands(CLI::App& app, Registry& registry);  // ps, maps
void add_request_commands(CLI::App& app, Registry& registry);  // capture requests to devices

}  // namespace mlfx::cli
