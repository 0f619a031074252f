// The lab's investigation commands (rehost, scan, report): registered on the CLI app here so
// that main.cc stays the evidence and intake commands.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <utility>
#include <vector>

namespace mlfx::cli {

// Each subcommand with what to run when it was parsed.
using Commands = std::vector<std::pair<CLI::App*, std::function<int()>>>;

void add_investigate_commands(CLI::App& app, Commands& out);

// --trusted-devices, for verify, open, recover and report.
inline constexpr const char* kTrustedDevicesHelp =
    "trust store that binds device ids to keys: the lab CA directory (mlfx ca), or a folder of "
    "<device-id>.pub device keys. Without it the signer's identity is unverified";

}  // namespace mlfx::cli
