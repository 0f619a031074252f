// /proc/PID/maps: one entry per mapping, as the kernel prints it (proc(5)).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx::agent::process {

struct MapEntry {
  uint64_t start = 0, end = 0;  // [start, end)
  std::string perms;            // "rwxp" / "r--s" ...
  uint64_t offset = 0;          // file offset in bytes
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t inode = 0;
  std::string path;  // empty for anonymous memory; "[heap]", "/usr/lib/x.so", "/x (deleted)" ...
  std::string vm_flags;  // smaps "VmFlags", e.g. "rd wr mr mw me ac dd" (empty from maps)

  uint64_t size() const { return end - start; }
  bool readable() const { return perms.size() > 0 && perms[0] == 'r'; }
  bool writable() const { return perms.size() > 1 && perms[1] == 'w'; }
  bool executable() const { return perms.size() > 2 && perms[2] == 'x'; }
  bool shared() const { return perms.size() > 3 && perms[3] == 's'; }
  // Backed by a file object (what NT_FILE lists): every named mapping except the kernel's
  // pseudo names in brackets ([heap], [stack], [vdso], [anon:NAME], ...).
  bool file_backed() const { return !path.empty() && path[0] != '['; }
  // A two-letter flag of smaps' VmFlags (proc(5)): "dd" (VM_DONTDUMP), "io" (VM_IO), ...
  bool has_vm_flag(std::string_view flag) const;
  // "7f12a000-7f12c000", the spelling of /proc/PID/map_files entries.
  std::string range_name() const;
};

// Strict: any malformed line fails with its line number.
Result<std::vector<MapEntry>> parse_proc_maps(std::string_view text);
Result<std::vector<MapEntry>> read_proc_maps(pid_t pid);

// /proc/PID/smaps: the same entries, each followed by "Key: value" lines; keeps VmFlags.
Result<std::vector<MapEntry>> parse_proc_smaps(std::string_view text);
Result<std::vector<MapEntry>> read_proc_smaps(pid_t pid);

}  // namespace mlfx::agent::process
