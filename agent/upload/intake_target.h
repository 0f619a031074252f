// The lab intake as `mlfx-agent ship` and the daemon's [upload] name it, made into the
// uploader's IntakeTarget: HOST:PORT checked, the TLS files, and an optional pin of the intake's
// receipt key (its .pub file, or the "sha256:" fingerprint itself).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "upload/uploader.h"

namespace mlfx::agent {

struct IntakeSettings {
  std::string server;  // HOST:PORT
  std::string ca, cert, key, crl, intake_key;
  uint64_t bandwidth = 0;  // bytes per second, 0: unlimited
  std::chrono::milliseconds timeout{60000};
  std::string option = "--server";  // how the server was named, for messages
};

Result<IntakeTarget> intake_target(const IntakeSettings& s);

}  // namespace mlfx::agent
