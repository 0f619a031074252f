#include "frontends/cpython/layout.h"

namespace mlfx::frontends::cpython {

namespace {
// Verified against 3.11.2 (Debian) and 3.11.7 by offsetof programs and live walks.
constexpr Layout kPy311 = {
    .name = "3.11",
    .hex_min = 0x030B0000,
    .hex_max = 0x030BFFFF,
    .runtime_interpreters_head = 40,
    .interp_gc = 648,
    .interp_modules = 888,
    .ht_qualname = 864,
    .ht_cached_keys = 872,
    .str_ascii_data = 48,
    .str_compact_data = 72,
    .dict_style = DictStyle::kPy311,
    .instance_dict_style = InstanceDictStyle::kPy311,
};
constexpr const Layout* kLayouts[] = {&kPy311};
}  // namespace

const Layout* layout_for(uint32_t hex) {
  for (const Layout* l : kLayouts)
    if (hex >= l->hex_min && hex <= l->hex_max) return l;
  return nullptr;
}

const char* supported_versions() { return "3.11"; }

}  // namespace mlfx::frontends::cpython
