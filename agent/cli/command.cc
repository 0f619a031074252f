#include "cli/command.h"

#include <cstdio>

namespace mlfx::agent::cli {

int report_error(const std::string& command, const Error& e) {
  std::fprintf(stderr, "mlfx-agent %s: error: %s\n", command.c_str(), e.to_string().c_str());
  return kExitFailure;
}

int Registry::parse_and_run(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  for (const Command& c : commands_)
    if (c.app->parsed()) return c.run();
  return kExitUsage;
}

Result<Spool> open_spool(const std::string& dir, std::optional<uint64_t> quota) {
  auto spool = Spool::open(dir, quota);
  if (spool)
    for (const auto& n : spool->notices()) std::fprintf(stderr, "mlfx-agent: spool: %s\n", n.c_str());
  return spool;
}

}  // namespace mlfx::agent::cli
