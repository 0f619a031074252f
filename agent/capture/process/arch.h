// What the ELF core needs to know about the host architecture: e_machine, and which register
// sets each thread contributes beyond NT_PRSTATUS, in the order the kernel's core dumps use.
// The agent captures processes of its own architecture only (no 32-bit compat processes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace mlfx::agent::process {

struct RegsetSpec {
  uint32_t note_type;     // NT_* (also the PTRACE_GETREGSET selector)
  const char* note_name;  // "CORE" or "LINUX", as the kernel names it
  size_t max_size;        // buffer offered to PTRACE_GETREGSET; the kernel reports the real size
  bool required;          // a thread without it fails the capture; else the note is left out
};

struct ArchInfo {
  const char* name;  // "x86_64", "aarch64": the `uname -m` spelling
  uint16_t elf_machine;
  std::span<const RegsetSpec> extra_regsets;  // after NT_PRSTATUS, per thread
};

const ArchInfo& host_arch();

}  // namespace mlfx::agent::process
