#include "layers/layer.h"

#include <algorithm>
#include <cstdio>

namespace mlfx::layers {

Error Layer::invalid_address(uint64_t addr) const {
  return Error(Errc::kInvalidAddress, "address not mapped").at({name(), addr, std::nullopt});
}

Status Layer::read(uint64_t addr, void* out, uint64_t len) const {
  auto* dst = static_cast<uint8_t*>(out);
  while (len > 0) {
    if (addr + len < addr) return fail(invalid_address(addr));  // wraps around
    uint64_t run = mapped_run(addr, len);
    if (run == 0) return fail(invalid_address(addr));
    const uint8_t* p = view(addr, run);
    if (!p) return fail(invalid_address(addr));
    std::memcpy(dst, p, run);
    dst += run;
    addr += run;
    len -= run;
  }
  return {};
}

bool Layer::is_mapped(uint64_t addr, uint64_t len) const {
  while (len > 0) {
    uint64_t run = mapped_run(addr, len);
    if (run == 0) return false;
    addr += run;
    len -= run;
  }
  return true;
}

Result<std::string> Layer::read_cstring(uint64_t addr, size_t max_len) const {
  const uint64_t start = addr;
  std::string s;
  while (s.size() < max_len) {
    uint64_t run = mapped_run(addr, std::min<uint64_t>(max_len - s.size(), 256));
    if (run == 0) return fail(invalid_address(addr));
    const uint8_t* p = view(addr, run);
    if (!p) return fail(invalid_address(addr));
    const void* nul = std::memchr(p, 0, run);
    if (nul) {
      s.append(reinterpret_cast<const char*>(p), static_cast<const uint8_t*>(nul) - p);
      return s;
    }
    s.append(reinterpret_cast<const char*>(p), run);
    addr += run;
  }
  return fail(Error(Errc::kBadFormat, "string not terminated within " + std::to_string(max_len) + " bytes")
                  .at({name(), start, std::nullopt}));
}

}  // namespace mlfx::layers
