// Timestamps for manifests and custody events: UTC, ISO 8601, microseconds, explicit zone.
#pragma once

#include <string>

namespace mlfx {

// e.g. "2026-11-21T21:53:24.123456Z"
std::string utc_timestamp();

}  // namespace mlfx
