// mlfx-agent's command registry: each command group (capture, spool, ship) adds its
// subcommands and what to run for each; main() parses and runs the one that was given.
// Only the CLI turns errors into exit codes: 0 success, 1 failure (the message says what
// failed and what to do), 2 usage error, 3 a partial capture (the target exited during it;
// the bundle is kept and says so) without --allow-partial.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"
#include "upload/spool.h"

namespace mlfx::agent::cli {

inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitPartialCapture = 3;

// Prints "mlfx-agent COMMAND: error: MESSAGE"; returns 1.
int report_error(const std::string& command, const Error& e);

class Registry {
 public:
  void add(CLI::App* app, std::function<int()> run) { commands_.push_back({app, std::move(run)}); }
  // Parses argv and runs the given command; returns the exit status.
  int parse_and_run(CLI::App& app, int argc, char** argv);

 private:
  struct Command {
    CLI::App* app;
    std::function<int()> run;
  };
  std::vector<Command> commands_;
};

// The spool, with what it did on opening (torn captures removed or queued) told to the operator.
Result<Spool> open_spool(const std::string& dir, std::optional<uint64_t> quota = std::nullopt);

// The spool's state as JSON (`status`), and printed for a person.
Result<json::Json> spool_status(const std::string& dir);
void print_spool_status(const json::Json& status);

// The command groups, one file each.
void add_capture_commands(CLI::App& app, Registry& registry);
void add_spool_commands(CLI::App& app, Registry& registry);
void add_ship_command(CLI::App& app, Registry& registry);
void add_daemon_commands(CLI::App& app, Registry& registry);

}  // namespace mlfx::agent::cli
