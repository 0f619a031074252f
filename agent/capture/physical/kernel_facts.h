// What the lab needs to find its way in a physical image without a symbol table, captured at
// acquisition: the kernel's banner (/proc/version, which must occur in the image), release,
// machine and page size; /proc/kallsyms when root sees real (KASLR-applied) addresses; and the
// kernel's BTF (/sys/kernel/btf/vmlinux, the types).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::physical {

inline constexpr char kKallsymsPath[] = "/proc/kallsyms";
inline constexpr char kBtfPath[] = "/sys/kernel/btf/vmlinux";

struct KernelFacts {
  std::string banner;  // /proc/version, as read
  std::string release, machine;
  uint64_t page_size = 0;
};

Result<KernelFacts> read_kernel_facts();

// Whether a kallsyms text shows real addresses: with kptr_restrict (or without CAP_SYSLOG)
// every address reads 0. Per-CPU symbols are at 0 even when real, so one non-zero address is
// enough.
bool kallsyms_has_addresses(std::string_view text);

// /proc/kallsyms when it shows real addresses; nullopt (and why, in `why_not`) otherwise.
std::optional<std::string> read_kallsyms(std::string* why_not);

}  // namespace mlfx::agent::physical
