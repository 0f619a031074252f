// The GNU build-id of an ELF file (NT_GNU_BUILD_ID in a PT_NOTE segment): what ties a mapped
// library in the evidence to the exact binary and its debug symbols.
#pragma once

#include <optional>
#include <string>

#include "mlfx/base/file.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::process {

// The build-id as lowercase hex; nullopt for a file that is not a native-endian ELF or has no
// build-id. Errors only for I/O failures. Reads a few KiB; sizes in the file are bounded.
Result<std::optional<std::string>> read_gnu_build_id(const File& f);

}  // namespace mlfx::agent::process
