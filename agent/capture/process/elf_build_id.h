// The GNU build-id of an ELF file (NT_GNU_BUILD_ID in a PT_NOTE segment): what ties a mapped
// library in the evidence to the exact binary and its debug symbols.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "capture/process/proc_maps.h"
#include "mlfx/base/file.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::process {

// The build-id as lowercase hex; nullopt for a file that is not a native-endian ELF or has no
// build-id. Errors only for I/O failures. Reads a few KiB; sizes in the file are bounded.
Result<std::optional<std::string>> read_gnu_build_id(const File& f);

// The mapped file as the target sees it: map_files names the exact inode (even a deleted
// one) but needs CAP_SYS_ADMIN; /proc/PID/root resolves the path in the target's mount
// namespace (containers).
bool stat_mapped_file(pid_t pid, const MapEntry& m, struct stat& st);
Result<File> open_mapped_file(pid_t pid, const MapEntry& m);

// The build-id of every file mapping of `maps` (parallel to it; nullopt for anonymous memory,
// files that are not regular, not ELF or without one), each file read once.
std::vector<std::optional<std::string>> mapped_build_ids(pid_t pid, const std::vector<MapEntry>& maps);

}  // namespace mlfx::agent::process
