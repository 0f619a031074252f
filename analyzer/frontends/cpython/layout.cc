#include "frontends/cpython/layout.h"

namespace mlfx::frontends::cpython {

namespace {
// Measured with offsetof programs against the internal headers of 3.8.18, 3.9.18, 3.10.13,
// 3.11.7, 3.12.1 and 3.13.0 (pyenv builds) and walked in live processes of those versions and
// of Debian's 3.11.2 and 3.13.5.
constexpr Layout kPy38 = {
    .name = "3.8", .hex_min = 0x03080000, .hex_max = 0x0308FFFF,
    .runtime_interpreters_head = 32, .gc_home = GcHome::kRuntime, .gc_offset = 344,
    .interp_modules = 56, .interp_sysdict = 72, .gc_threshold0 = 700,
    .ht_qualname = 864, .ht_cached_keys = 872, .long_style = LongStyle::kSignedSize,
    .str_ascii_data = 48, .str_compact_data = 72,
    .dict_keys_style = DictKeysStyle::kSized, .split_values_style = SplitValuesStyle::kPlain,
    .instance_dict_style = InstanceDictStyle::kDictOffset,
};
constexpr Layout kPy39 = {
    .name = "3.9", .hex_min = 0x03090000, .hex_max = 0x0309FFFF,
    .runtime_interpreters_head = 32, .gc_home = GcHome::kInterpreter, .gc_offset = 616,
    .interp_modules = 856, .interp_sysdict = 872, .gc_threshold0 = 700,
    .ht_qualname = 856, .ht_cached_keys = 864, .long_style = LongStyle::kSignedSize,
    .str_ascii_data = 48, .str_compact_data = 72,
    .dict_keys_style = DictKeysStyle::kSized, .split_values_style = SplitValuesStyle::kPlain,
    .instance_dict_style = InstanceDictStyle::kDictOffset,
};
constexpr Layout kPy310 = {
    .name = "3.10", .hex_min = 0x030A0000, .hex_max = 0x030AFFFF,
    .runtime_interpreters_head = 32, .gc_home = GcHome::kInterpreter, .gc_offset = 616,
    .interp_modules = 856, .interp_sysdict = 872, .gc_threshold0 = 700,
    .ht_qualname = 864, .ht_cached_keys = 872, .long_style = LongStyle::kSignedSize,
    .str_ascii_data = 48, .str_compact_data = 72,
    .dict_keys_style = DictKeysStyle::kSized, .split_values_style = SplitValuesStyle::kPlain,
    .instance_dict_style = InstanceDictStyle::kDictOffset,
};
constexpr Layout kPy311 = {
    .name = "3.11", .hex_min = 0x030B0000, .hex_max = 0x030BFFFF,
    .runtime_interpreters_head = 40, .gc_home = GcHome::kInterpreter, .gc_offset = 648,
    .interp_modules = 888, .interp_sysdict = 904, .gc_threshold0 = 700,
    .ht_qualname = 864, .ht_cached_keys = 872, .long_style = LongStyle::kSignedSize,
    .str_ascii_data = 48, .str_compact_data = 72,
    .dict_keys_style = DictKeysStyle::kLog2, .split_values_style = SplitValuesStyle::kOrderBefore,
    .instance_dict_style = InstanceDictStyle::kPy311,
};
constexpr Layout kPy312 = {
    .name = "3.12", .hex_min = 0x030C0000, .hex_max = 0x030CFFFF,
    .runtime_interpreters_head = 40, .gc_home = GcHome::kInterpreter, .gc_offset = 112,
    .interp_modules = 944, .interp_sysdict = 352, .gc_threshold0 = 700,
    .ht_qualname = 872, .ht_cached_keys = 880, .long_style = LongStyle::kTagged,
    .str_ascii_data = 40, .str_compact_data = 56,
    .dict_keys_style = DictKeysStyle::kLog2, .split_values_style = SplitValuesStyle::kOrderBefore,
    .instance_dict_style = InstanceDictStyle::kPy312,
};
constexpr Layout kPy313 = {
    .name = "3.13", .hex_min = 0x030D0000, .hex_max = 0x030DFFFF,
    .runtime_interpreters_head = 632, .gc_home = GcHome::kInterpreter, .gc_offset = 7400,
    .interp_modules = 7656, .interp_sysdict = 7640, .gc_threshold0 = 2000,
    .ht_qualname = 872, .ht_cached_keys = 880, .long_style = LongStyle::kTagged,
    .str_ascii_data = 40, .str_compact_data = 56,
    .dict_keys_style = DictKeysStyle::kLog2, .split_values_style = SplitValuesStyle::kHeader,
    .instance_dict_style = InstanceDictStyle::kPy313, .debug_offsets = true,
};
// 3.14 (measured on Debian's 3.14.10): the interpreter's own offsets come from
// _Py_DebugOffsets; tuples cache their hash before the items; the GC state keeps four
// list heads (young, old[2], permanent: 3.14.0-3.14.4; generations[3], permanent: 3.14.5+)
// at the same places, with generation0 (3.14.5+) moved to the end of the struct.
constexpr Layout kPy314 = {
    .name = "3.14", .hex_min = 0x030E0000, .hex_max = 0x030EFFFF,
    .runtime_interpreters_head = 40, .gc_home = GcHome::kInterpreter, .gc_offset = 0,
    .interp_modules = 0, .interp_sysdict = 0, .gc_lists = {24, 48, 72, 96}, .gc_generation0 = 0,
    .gc_threshold0 = 2000,
    .ht_qualname = 872, .ht_cached_keys = 880,
    .tuple_items = 32,  // a cached hash at +24
    .long_style = LongStyle::kTagged,
    .str_ascii_data = 40, .str_compact_data = 56,
    .dict_keys_style = DictKeysStyle::kLog2, .split_values_style = SplitValuesStyle::kHeader,
    .instance_dict_style = InstanceDictStyle::kPy313, .debug_offsets = true,
};
constexpr const Layout* kLayouts[] = {&kPy38, &kPy39, &kPy310, &kPy311, &kPy312, &kPy313, &kPy314};
}  // namespace

const Layout* layout_for(uint32_t hex) {
  for (const Layout* l : kLayouts)
    if (hex >= l->hex_min && hex <= l->hex_max) return l;
  return nullptr;
}

const Layout* const* all_layouts(size_t& count) {
  count = sizeof kLayouts / sizeof kLayouts[0];
  return kLayouts;
}

std::string supported_versions() {
  return std::string(kLayouts[0]->name) + "-" + kLayouts[sizeof kLayouts / sizeof kLayouts[0] - 1]->name;
}

}  // namespace mlfx::frontends::cpython
