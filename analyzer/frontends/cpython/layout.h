// CPython object layouts as data: one table per supported version, checked against the
// image before use (see python_runtime.cc) and never trusted blindly.
// Offsets: CPython's Include/cpython/*.h and Include/internal/pycore_*.h of each version
// (x86-64 and aarch64, LP64).
#pragma once

#include <cstdint>

namespace mlfx::frontends::cpython {

enum class DictStyle { kPy311 };         // PyDictKeysObject with dk_log2_size / dk_kind
enum class InstanceDictStyle { kPy311 };  // managed dict pre-header: values @-32, dict @-24

struct Layout {
  const char* name;      // "3.11"
  uint32_t hex_min, hex_max;  // PY_VERSION_HEX range this table covers
  // _PyRuntime and the interpreter
  uint32_t runtime_interpreters_head;
  uint32_t interp_gc;       // gc state inside PyInterpreterState
  uint32_t interp_modules;  // sys.modules
  uint32_t module_dict = 16;  // PyModuleObject.md_dict
  // struct _gc_runtime_state
  uint32_t gc_generations = 24, gc_generation_size = 24, gc_generation0 = 96, gc_permanent = 104;
  uint32_t gc_head_size = 16;  // PyGC_Head before each tracked object
  // PyTypeObject / PyHeapTypeObject
  uint32_t tp_name = 24, tp_basicsize = 32, tp_itemsize = 40, tp_flags = 168, tp_dict = 264,
           tp_dictoffset = 288, tp_mro = 344;
  uint32_t ht_qualname, ht_cached_keys;
  // objects
  uint32_t ob_type = 8, var_size = 16;
  uint32_t tuple_items = 24, list_items = 24;
  uint32_t float_value = 16;
  uint32_t long_digits = 24;  // 30-bit digits; sign and count in ob_size
  uint32_t bytes_data = 32;
  uint32_t str_length = 16, str_state = 32, str_ascii_data, str_compact_data;
  uint32_t set_mask = 32, set_table = 40;
  uint32_t dict_used = 16, dict_keys = 32, dict_values = 40;
  uint32_t odict_first = 48;  // collections.OrderedDict node list; node {key, hash, next, prev}
  DictStyle dict_style;
  InstanceDictStyle instance_dict_style;
};

// The table for PY_VERSION_HEX `hex`, or nullptr when that version is not supported.
const Layout* layout_for(uint32_t hex);
// "3.11" style list of what is supported, for messages.
const char* supported_versions();

}  // namespace mlfx::frontends::cpython
