// Reads CPython objects out of a process image through a layer: types, str, int, float,
// bool, None, bytes, tuple, list, set, dict (combined, split, OrderedDict order) and
// instance dicts. Every read is bounded; hostile contents give errors, not crashes.
//
// Strings are decoded once per address and kept (charged to the analysis budget); names
// come back as views of that cache, so a key that a million dict entries alias costs its
// bytes once. Names longer than kMaxNameBytes are refused, never copied per use.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "frontends/cpython/layout.h"
#include "layers/layer.h"
#include "mlfx/base/json.h"
#include "base/diagnostics.h"

namespace mlfx::frontends::cpython {

// Caps on what one object may be (documented in README "Hostile memory").
inline constexpr uint64_t kMaxNameBytes = 4096;        // a name: dict key, attribute, class
inline constexpr uint64_t kMaxStrBytes = 64 * 1024;    // any str read (a plain attribute value)
inline constexpr uint64_t kMaxItems = uint64_t{1} << 20;  // tuple/list/dict/set sizes

struct TypeInfo {
  uint64_t addr = 0;
  std::string name;      // tp_name: bare for heap types, dotted for static C types
  std::string module;    // __module__ of heap types, else the part of tp_name before the last dot
  std::string qualname;  // ht_qualname of heap types, else the part after the last dot
  uint64_t flags = 0;
  uint64_t basicsize = 0;
  int64_t dictoffset = 0;
  bool heap = false;
  std::vector<uint64_t> mro;  // type addresses, this type first
  std::string full;           // module.qualname (qualname alone without a module)

  const std::string& full_name() const { return full; }
};

using Items = std::vector<std::pair<uint64_t, uint64_t>>;  // (key object, value object)
// (name, value object); the names view the reader's string cache and live as long as it.
using NamedItems = std::vector<std::pair<std::string_view, uint64_t>>;

class ObjectReader {
 public:
  // Decoded strings and types are charged to `diag`'s budget; refused names are reported there.
  ObjectReader(const layers::Layer& mem, const Layout& layout, Diagnostics& diag)
      : mem_(mem), L_(layout), diag_(diag) {}

  const layers::Layer& memory() const { return mem_; }
  Result<uint64_t> type_of(uint64_t obj) const;
  // Cached per type address.
  Result<const TypeInfo*> type_info(uint64_t type) const;
  Result<const TypeInfo*> type_info_of(uint64_t obj) const;
  // Does the type's MRO contain a class with this module and qualname?
  Result<bool> has_base(uint64_t type, std::string_view module, std::string_view qualname) const;

  // A str of at most max_bytes UTF-8 bytes (<= kMaxStrBytes), decoded once and cached.
  Result<std::string_view> str_view(uint64_t obj, uint64_t max_bytes = kMaxNameBytes) const;
  Result<std::string> str(uint64_t obj, uint64_t max_bytes = kMaxNameBytes) const;
  Result<json::Json> integer(uint64_t obj) const;  // a JSON number, or a decimal string if huge
  Result<double> real(uint64_t obj) const;
  Result<std::vector<uint64_t>> tuple_items(uint64_t obj) const;
  Result<std::vector<uint64_t>> list_items(uint64_t obj) const;
  Result<std::vector<uint64_t>> set_items(uint64_t obj) const;
  // Items in iteration order (the linked list order for an OrderedDict).
  Result<Items> dict_items(uint64_t obj) const;
  // The instance __dict__ as (name, value) pairs, wherever it lives (managed, split, offset).
  Result<NamedItems> instance_dict(uint64_t obj) const;
  // A str-keyed dict as (name, value) pairs: keys that are not str are skipped, names over
  // kMaxNameBytes are skipped with a diagnostic.
  Result<NamedItems> str_dict(uint64_t obj) const;

  // None, bool, int, float, str, short bytes, and tuples/lists of those, as JSON; nullopt for
  // anything else (modules, tensors, functions...).
  Result<std::optional<json::Json>> plain_value(uint64_t obj, int depth = 0) const;
  bool is_none(uint64_t obj) const;

 private:
  Result<Items> dict_entries(uint64_t keys, uint64_t values, bool split) const;
  Result<Items> split_entries(const uint8_t* raw, uint64_t nentries, uint64_t entry_size, uint64_t key_at,
                              uint64_t values) const;
  Result<std::optional<json::Json>> plain_value(uint64_t obj, int depth, uint64_t& budget) const;
  Result<const TypeInfo*> exact_builtin(uint64_t obj, const char* name) const;
  Result<const TypeInfo*> read_type(uint64_t type) const;
  Result<std::string> decode(uint64_t obj, uint64_t max_bytes) const;
  Result<NamedItems> named(const Items& items, uint64_t dict) const;

  const layers::Layer& mem_;
  const Layout& L_;
  Diagnostics& diag_;
  mutable std::unordered_map<uint64_t, TypeInfo> types_;
  mutable std::unordered_map<uint64_t, std::string> strings_;  // decoded str by address
  mutable int type_depth_ = 0;
};

}  // namespace mlfx::frontends::cpython
