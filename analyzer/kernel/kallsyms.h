// /proc/kallsyms as captured by root: "ADDRESS TYPE NAME[\t[MODULE]]" a line, addresses with
// KASLR applied. Hostile input: lines and names are bounded, a line that does not parse is an
// error naming its number, and a table read without privilege (every address zero) is refused
// because it would place every symbol at 0.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "mlfx/base/result.h"

namespace mlfx::kernel {

inline constexpr size_t kKallsymsMaxSymbols = size_t{1} << 23;  // a kernel with modules: ~200,000
inline constexpr size_t kKallsymsMaxLine = 1024;                // KSYM_NAME_LEN is 512

class Kallsyms {
 public:
  static Result<Kallsyms> parse(std::string_view text);

  // The address of a symbol of the kernel proper (not a module's); the first when repeated.
  std::optional<uint64_t> find(std::string_view name) const;
  // The address or an error saying the symbol is missing (a kernel without KALLSYMS_ALL?).
  Result<uint64_t> require(std::string_view name) const;
  size_t size() const { return symbols_.size(); }

 private:
  std::unordered_map<std::string, uint64_t> symbols_;
};

}  // namespace mlfx::kernel
