// The notes of a Linux process core, in the order the kernel writes them (fs/binfmt_elf.c):
//   main thread:  NT_PRSTATUS, NT_PRPSINFO, NT_AUXV, NT_FILE, then its other register sets
//   every other thread: NT_PRSTATUS, then its other register sets
// Built from glibc's <sys/procfs.h> structs, so they are right for the host architecture.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "elf_core_writer.h"
#include "proc_maps.h"
#include "thread_freezer.h"

namespace mlfx::agent::process {

struct ProcessNoteInfo {
  pid_t pid = 0, ppid = 0, pgrp = 0, sid = 0;
  uint32_t uid = 0, gid = 0;  // real ids
  char state = 'R';           // as /proc/PID/stat shows it before the freeze
  int64_t nice = 0;
  uint64_t flags = 0;
  uint64_t cutime = 0, cstime = 0;  // clock ticks
  std::string comm;                 // up to 15 characters are kept
  std::string args;                 // command line with spaces; up to 79 characters are kept
};

struct ThreadNoteInfo {
  const FrozenThread* thread = nullptr;  // tid and registers
  uint64_t sigpend = 0, sighold = 0;     // SigPnd and SigBlk of /proc/PID/task/TID/status
  uint64_t utime = 0, stime = 0;         // clock ticks
};

Bytes make_prstatus(const ProcessNoteInfo& proc, const ThreadNoteInfo& t);
Bytes make_prpsinfo(const ProcessNoteInfo& proc);
// NT_FILE: count, page size, (start, end, offset in pages) per file-backed mapping, then
// their NUL-terminated names.
Bytes make_nt_file(const std::vector<MapEntry>& maps, uint64_t page_size);

// `threads` starts with the main thread.
std::vector<CoreNote> build_core_notes(const ProcessNoteInfo& proc,
                                       const std::vector<ThreadNoteInfo>& threads,
                                       const std::string& auxv, const std::vector<MapEntry>& maps,
                                       uint64_t page_size);

}  // namespace mlfx::agent::process
