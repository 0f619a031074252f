// A process as the frontends see it, whatever the evidence holds it in: its address space (the
// top layer) and the files mapped into it. An ELF core gives one (elf_core_layer.h); a process
// rebuilt from a physical image (LiME or mlfx_mem.ko plus the pagemap captured beside it) gives
// another. Frontends and the recovery engine use only this: no ELF-core types.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layers/layer.h"

namespace mlfx::layers {

struct MappedFile {  // one file mapping, as the kernel listed it
  uint64_t start = 0, end = 0, file_offset = 0;  // file_offset in bytes
  std::string path;
};

struct AddressRange {
  uint64_t start = 0, end = 0;  // [start, end)
};
// Appends [start, end), joined to the last range when it continues it (callers go in order).
inline void append_range(std::vector<AddressRange>& ranges, uint64_t start, uint64_t end) {
  if (!ranges.empty() && ranges.back().end == start) ranges.back().end = end;
  else ranges.push_back({start, end});
}
// A mapping with these permissions ("r-xp", as /proc/PID/maps prints them) is declared whole:
// a writable one may hold private changes, an unreadable one is a guard; never a file's bytes.
inline bool declared_whole(std::string_view perms) {
  return perms.size() >= 2 && (perms[1] == 'w' || perms[0] != 'r');
}

// Sorted, with ranges that overlap or touch merged; empty ones dropped.
inline std::vector<AddressRange> normalized(std::vector<AddressRange> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const AddressRange& a, const AddressRange& b) { return a.start < b.start; });
  std::vector<AddressRange> merged;
  for (const AddressRange& r : ranges) {
    if (r.end <= r.start) continue;
    if (!merged.empty() && r.start <= merged.back().end) merged.back().end = std::max(merged.back().end, r.end);
    else merged.push_back(r);
  }
  return merged;
}

struct ProcessFacts {  // what the evidence says about the process itself
  int32_t pid = 0;
  std::string command;  // the short name (comm)
  std::string args;     // the command line, as far as recorded
  size_t threads = 0;
  uint16_t elf_machine = 0;  // EM_X86_64, EM_AARCH64, ...
  size_t segments = 0;       // address ranges the evidence holds
  uint64_t image_bytes = 0;  // bytes of the process's memory the evidence holds
};

struct ProcessImage {
  std::string kind;                     // "ELF core", ...
  std::shared_ptr<const Layer> memory;  // the process's virtual address space
  std::vector<MappedFile> mapped_files;
  ProcessFacts facts;
  std::vector<std::string> warnings;    // damage found and tolerated (a truncated core, ...)
  // Where the evidence speaks for the address space: bytes it holds or lost, pages swapped out
  // or outside the image, whole mappings that may hold private changes (writable) or must not
  // be read (guard regions). The rest of a file mapping is the file's own bytes, which a
  // sysroot may supply (sysroot_layer.h). Sorted, disjoint.
  std::vector<AddressRange> declared;
  // GNU build-ids (hex) of mapped files, by path, as the agent read them at acquisition: what a
  // sysroot file must match where the evidence holds no copy of the file's ELF header.
  std::map<std::string, std::string> build_ids;
};

}  // namespace mlfx::layers
