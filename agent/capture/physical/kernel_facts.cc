#include "capture/physical/kernel_facts.h"

#include <sys/utsname.h>
#include <unistd.h>

#include "capture/process/procfs.h"

namespace mlfx::agent::physical {

Result<KernelFacts> read_kernel_facts() {
  KernelFacts k;
  MLFX_ASSIGN(k.banner, process::read_proc_file("/proc/version", 4096));
  utsname u{};
  if (uname(&u) != 0) return fail(Errc::kIo, "uname: " + process::errno_name(errno));
  k.release = u.release;
  k.machine = u.machine;
  const long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) return fail(Errc::kIo, "sysconf(_SC_PAGESIZE) failed");
  k.page_size = static_cast<uint64_t>(page);
  return k;
}

bool kallsyms_has_addresses(std::string_view text) {
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    const size_t space = line.find(' ');
    if (space != std::string_view::npos && line.substr(0, space).find_first_not_of('0') != std::string_view::npos)
      return true;
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return false;
}

std::optional<std::string> read_kallsyms(std::string* why_not) {
  auto text = process::read_proc_file(kKallsymsPath, 256u << 20);
  if (!text) {
    *why_not = "cannot read " + std::string(kKallsymsPath) + ": " + text.error().message();
    return std::nullopt;
  }
  if (!kallsyms_has_addresses(*text)) {
    *why_not = "every address in /proc/kallsyms reads 0 (kernel.kptr_restrict, or no CAP_SYSLOG)";
    return std::nullopt;
  }
  return std::move(*text);
}

}  // namespace mlfx::agent::physical
