// CPython object layouts as data: one table per supported minor version, checked against the
// image before use (see python_runtime.cc) and never trusted blindly. Where the interpreter
// publishes its own offsets (_Py_DebugOffsets, 3.13+), those are read and preferred.
// Offsets: CPython's Include/cpython/*.h and Include/internal/pycore_*.h of each version,
// measured by offsetof programs against each version's headers (x86-64 and aarch64, LP64:
// these structs hold only naturally aligned scalars and pointers).
#pragma once

#include <cstdint>
#include <string>

namespace mlfx::frontends::cpython {

// Where the garbage collector's state lives.
enum class GcHome : uint8_t {
  kRuntime,      // 3.8: _PyRuntime.gc
  kInterpreter,  // 3.9+: PyInterpreterState.gc
};

// PyDictKeysObject.
enum class DictKeysStyle : uint8_t {
  kSized,   // 3.8-3.10: dk_size @8, dk_lookup, dk_usable, dk_nentries @32, indices @40; entries {hash, key, value}
  kLog2,    // 3.11+: dk_log2_size u8 @8, dk_log2_index_bytes u8 @9, dk_kind u8 @10, dk_nentries @24, indices @32
};

// The values array of a split (shared-key) dict: where value i is and where the insertion
// order is kept.
enum class SplitValuesStyle : uint8_t {
  kPlain,        // 3.8-3.10: PyObject *values[]; order = the shared keys' order
  kOrderBefore,  // 3.11-3.12: PyObject *values[]; byte -1 prefix size, -2 count, -3-k the k-th index
  kHeader,       // 3.13+: {u8 capacity, size, embedded, valid; PyObject *values[capacity]; u8 order[]}
};

// Where an instance keeps its __dict__.
enum class InstanceDictStyle : uint8_t {
  kDictOffset,  // 3.8-3.10: *(obj + tp_dictoffset)
  kPy311,       // MANAGED_DICT pre-header: values* @-32, dict* @-24
  kPy312,       // MANAGED_DICT: @-24 a dict*, or values-1 tagged with bit 0
  kPy313,       // MANAGED_DICT: dict* @-24; INLINE_VALUES: values at obj + tp_basicsize
};

// How an int stores its sign and digit count.
enum class LongStyle : uint8_t {
  kSignedSize,  // <= 3.11: ob_size, signed, |ob_size| digits
  kTagged,      // 3.12+: lv_tag: sign (1 - (tag & 3)), digits tag >> 3
};

struct Layout {
  const char* name;           // "3.11"
  uint32_t hex_min, hex_max;  // PY_VERSION_HEX range this table covers
  // _PyRuntime and the interpreter
  uint32_t runtime_interpreters_head;
  GcHome gc_home;
  uint32_t gc_offset;       // of the GC state in _PyRuntime (3.8) or PyInterpreterState
  uint32_t interp_modules;  // sys.modules
  uint32_t interp_sysdict;  // sys.__dict__
  uint32_t module_dict = 16;  // PyModuleObject.md_dict
  // struct _gc_runtime_state: the list heads (PyGC_Head, then int threshold, int count) of
  // the three generations and the permanent generation, and generation0, which points at
  // the first head (a self-check).
  uint32_t gc_lists[4] = {24, 48, 72, 104};
  uint32_t gc_generation0 = 96;
  uint32_t gc_threshold0;   // the default threshold of the first list: a fingerprint
  uint32_t gc_head_size = 16;  // PyGC_Head before each tracked object
  // PyTypeObject / PyHeapTypeObject
  uint32_t tp_name = 24, tp_basicsize = 32, tp_itemsize = 40, tp_flags = 168, tp_dict = 264,
           tp_dictoffset = 288, tp_mro = 344;
  uint32_t ht_qualname, ht_cached_keys;
  // objects
  uint32_t ob_type = 8, var_size = 16;
  uint32_t tuple_items = 24, list_items = 24;
  uint32_t float_value = 16;
  uint32_t long_digits = 24;  // 30-bit digits
  LongStyle long_style;
  uint32_t bytes_data = 32;
  uint32_t str_length = 16, str_state = 32, str_ascii_data, str_compact_data;
  uint32_t set_mask = 32, set_table = 40;
  uint32_t dict_used = 16, dict_keys = 32, dict_values = 40;
  uint32_t odict_first = 48;  // collections.OrderedDict node list; node {key, hash, next, prev}
  DictKeysStyle dict_keys_style;
  SplitValuesStyle split_values_style;
  InstanceDictStyle instance_dict_style;
  bool debug_offsets = false;  // _PyRuntime begins with _Py_DebugOffsets ("xdebugpy")
};

// The table for PY_VERSION_HEX `hex` (only its major and minor count), or nullptr.
const Layout* layout_for(uint32_t hex);
// Every table, oldest first (for calibration when the version is not known).
const Layout* const* all_layouts(size_t& count);
// "3.8-3.13" style list of what is supported, for messages.
std::string supported_versions();

}  // namespace mlfx::frontends::cpython
