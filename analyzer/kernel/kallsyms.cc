#include "kernel/kallsyms.h"

#include <charconv>

namespace mlfx::kernel {
namespace {

Error bad_line(size_t line, std::string what) {
  return Error(Errc::kBadFormat, "kallsyms line " + std::to_string(line) + ": " + std::move(what));
}

bool printable_name(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) return false;
  return !s.empty();
}

}  // namespace

Result<Kallsyms> Kallsyms::parse(std::string_view text) {
  Kallsyms k;
  size_t line_no = 0, lines = 0;
  bool any_nonzero = false;
  while (!text.empty()) {
    ++line_no;
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.empty()) continue;
    if (line.size() > kKallsymsMaxLine) return fail(bad_line(line_no, "longer than " + std::to_string(kKallsymsMaxLine) + " bytes"));
    if (++lines > kKallsymsMaxSymbols) return fail(bad_line(line_no, "more than " + std::to_string(kKallsymsMaxSymbols) + " symbols"));
    // ADDRESS ' ' TYPE ' ' NAME [ '\t' '[' MODULE ']' ]
    const size_t sp1 = line.find(' ');
    if (sp1 == std::string_view::npos || sp1 == 0 || sp1 > 16 || line.size() < sp1 + 4 || line[sp1 + 2] != ' ')
      return fail(bad_line(line_no, "not 'ADDRESS TYPE NAME'"));
    uint64_t addr = 0;
    auto [end, ec] = std::from_chars(line.data(), line.data() + sp1, addr, 16);
    if (ec != std::errc() || end != line.data() + sp1) return fail(bad_line(line_no, "address is not hexadecimal"));
    std::string_view name = line.substr(sp1 + 3);
    const size_t tab = name.find('\t');
    const bool in_module = tab != std::string_view::npos;
    if (in_module) name = name.substr(0, tab);
    if (!printable_name(name)) return fail(bad_line(line_no, "name is empty or has unprintable bytes"));
    any_nonzero |= addr != 0;
    if (!in_module) k.symbols_.emplace(std::string(name), addr);
  }
  if (lines == 0) return fail(Errc::kBadFormat, "kallsyms is empty");
  if (!any_nonzero)
    return fail(Errc::kBadFormat, "kallsyms has only zero addresses: it was read without privilege "
                                  "(kptr_restrict); capture it as root");
  return k;
}

std::optional<uint64_t> Kallsyms::find(std::string_view name) const {
  auto it = symbols_.find(std::string(name));
  if (it == symbols_.end()) return std::nullopt;
  return it->second;
}

Result<uint64_t> Kallsyms::require(std::string_view name) const {
  if (auto a = find(name)) return *a;
  return fail(Errc::kNotFound, "kallsyms has no symbol '" + std::string(name) +
                                   "' (a kernel built without CONFIG_KALLSYMS_ALL lists no data symbols)");
}

}  // namespace mlfx::kernel
