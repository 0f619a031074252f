#include "frontends/cpython/python_objects.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace mlfx::frontends::cpython {

namespace {

constexpr size_t kMaxMro = 256;
constexpr int kMaxTypeDepth = 16;
constexpr int kMaxPlainDepth = 8;
// What one plain value may cost: 16 bytes per item plus its string bytes (4096 bare items).
constexpr uint64_t kMaxPlainBytes = 64 * 1024;
constexpr uint64_t kPlainItemBytes = 16;
// Bytes kept per cached string or type beyond their text: map node, string header.
constexpr uint64_t kCacheEntryBytes = 96;
// tp_flags
constexpr uint64_t kHeapType = 1ull << 9, kManagedDict = 1ull << 4, kInlineValues = 1ull << 2, kLongSubclass = 1ull << 24,
                   kListSubclass = 1ull << 25, kTupleSubclass = 1ull << 26, kBytesSubclass = 1ull << 27,
                   kUnicodeSubclass = 1ull << 28, kDictSubclass = 1ull << 29, kTypeSubclass = 1ull << 31;

Error not_a(const char* what, uint64_t obj) {
  return Error(Errc::kBadFormat, "object at " + hex_address(obj) + " is not a " + what);
}

// Hostile sizes must cost no memory: the bytes must all be in the image before a buffer is
// sized for them (one range check instead of a failed read into a 128 MiB vector).
Status check_mapped(const layers::Layer& mem, uint64_t addr, uint64_t len, const char* what, uint64_t obj) {
  if (len <= UINT64_MAX - addr && mem.is_mapped(addr, len)) return {};
  return fail(Error(Errc::kInvalidAddress, std::string(what) + " at " + hex_address(obj) + ": its " +
                                              std::to_string(len) + " bytes are not all mapped")
                  .at({mem.name(), addr, std::nullopt}));
}

// UTF-8 encoding of one code point (lone surrogates become U+FFFD).
void append_utf8(std::string& out, uint32_t cp) {
  if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | cp >> 6);
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | cp >> 12);
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    if (cp > 0x10ffff) cp = 0xfffd;
    out += static_cast<char>(0xf0 | cp >> 18);
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

}  // namespace

Result<uint64_t> ObjectReader::type_of(uint64_t obj) const {
  MLFX_ASSIGN(uint64_t t, mem_.read_u64(obj + L_.ob_type));
  if (!t) return fail(Errc::kBadFormat, "object at " + hex_address(obj) + " has no type");
  return t;
}

Result<const TypeInfo*> ObjectReader::type_info(uint64_t type) const {
  if (auto it = types_.find(type); it != types_.end()) return &it->second;
  // Reading a type reads objects whose types must be read in turn; a hostile image could
  // make that circular.
  if (type_depth_ >= kMaxTypeDepth)
    return fail(Errc::kBadFormat, "type at " + hex_address(type) + ": type objects nest too deeply (circular?)");
  ++type_depth_;
  auto result = read_type(type);
  --type_depth_;
  return result;
}

Result<const TypeInfo*> ObjectReader::read_type(uint64_t type) const {
  TypeInfo t;
  t.addr = type;
  MLFX_ASSIGN(t.flags, mem_.read_u64(type + L_.tp_flags));
  MLFX_ASSIGN(uint64_t name_ptr, mem_.read_u64(type + L_.tp_name));
  MLFX_ASSIGN(t.name, mem_.read_cstring(name_ptr, 512));
  MLFX_ASSIGN(t.basicsize, mem_.read_u64(type + L_.tp_basicsize));
  MLFX_ASSIGN(uint64_t dictoffset, mem_.read_u64(type + L_.tp_dictoffset));
  t.dictoffset = static_cast<int64_t>(dictoffset);
  t.heap = t.flags & kHeapType;
  // Every field of the type itself is read before any object it points to: a type that fails
  // is not cached, so a failure after the nested reads below would redo them on every use
  // (exponentially, through types whose dict keys or qualname are of that same type).
  MLFX_ASSIGN(uint64_t dict, mem_.read_u64(type + L_.tp_dict));
  MLFX_ASSIGN(uint64_t mro, mem_.read_u64(type + L_.tp_mro));
  if (t.heap) {
    MLFX_ASSIGN(uint64_t qual, mem_.read_u64(type + L_.ht_qualname));
    auto q = str_view(qual);
    t.qualname = q ? std::string(*q) : t.name;
    if (!q && q.error().code() == Errc::kUnsupported)
      diag_.warn("type " + t.name.substr(0, 200) + " at " + hex_address(type) + ": qualname refused (" +
                 q.error().to_string() + "); tp_name used");
    if (dict) {
      auto items = str_dict(dict);
      if (items)
        for (const auto& [k, v] : *items)
          if (k == "__module__") {
            auto m = str_view(v);
            if (m) t.module = *m;
          }
    }
  } else {
    auto dot = t.name.find_last_of('.');
    t.module = dot == std::string::npos ? "" : t.name.substr(0, dot);
    t.qualname = dot == std::string::npos ? t.name : t.name.substr(dot + 1);
    if (t.module == "builtins") t.module.clear();
  }
  // The MRO tuple is read without checking its type: that check would need this type's
  // own MRO first when the type is `tuple`.
  if (mro) {
    auto n = mem_.read_u64(mro + L_.var_size);
    if (n && *n <= kMaxMro) {
      t.mro.resize(*n);
      if (!mem_.read(mro + L_.tuple_items, t.mro.data(), *n * 8)) t.mro.clear();
    }
  }
  if (t.mro.empty()) t.mro.push_back(type);
  t.full = t.module.empty() ? t.qualname : t.module + "." + t.qualname;
  if (!diag_.spend(kCacheEntryBytes + sizeof t + t.name.size() + 2 * t.full.size() + 8 * t.mro.size(), "reading types"))
    return fail(Errc::kUnsupported, std::string(kBudgetSpent) + "type at " + hex_address(type) + " not read: " +
                                         diag_.exhausted());
  return &types_.emplace(type, std::move(t)).first->second;
}

Result<const TypeInfo*> ObjectReader::type_info_of(uint64_t obj) const {
  MLFX_ASSIGN(uint64_t t, type_of(obj));
  return type_info(t);
}

Result<bool> ObjectReader::has_base(uint64_t type, std::string_view module, std::string_view qualname) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info(type));
  std::vector<uint64_t> mro = t->mro;  // copy: type_info() may grow the cache
  for (uint64_t base : mro) {
    auto b = type_info(base);
    if (b && (*b)->qualname == qualname && (*b)->module == module) return true;
  }
  return false;
}

Result<const TypeInfo*> ObjectReader::exact_builtin(uint64_t obj, const char* name) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (t->heap || t->name != name) return fail(not_a(name, obj));
  return t;
}

bool ObjectReader::is_none(uint64_t obj) const {
  auto t = type_info_of(obj);
  return t && !(*t)->heap && (*t)->name == "NoneType";
}

Result<std::string_view> ObjectReader::str_view(uint64_t obj, uint64_t max_bytes) const {
  auto it = strings_.find(obj);
  if (it == strings_.end()) {
    // Decoded only up to this caller's cap: a longer str costs nothing (a later caller with a
    // larger cap decodes it then).
    MLFX_ASSIGN(std::string s, decode(obj, std::min(max_bytes, kMaxStrBytes)));
    if (!diag_.spend(kCacheEntryBytes + s.size(), "decoding strings", diag_.reserve()))
      return fail(Errc::kUnsupported, std::string(kBudgetSpent) + "str at " + hex_address(obj) + " not read: " +
                                           diag_.exhausted());
    it = strings_.emplace(obj, std::move(s)).first;
  }
  if (it->second.size() > max_bytes)
    return fail(Errc::kUnsupported, "str at " + hex_address(obj) + " is " + std::to_string(it->second.size()) +
                                         " bytes long, over the cap of " + std::to_string(max_bytes));
  return std::string_view(it->second);
}

Result<std::string> ObjectReader::str(uint64_t obj, uint64_t max_bytes) const {
  MLFX_ASSIGN(std::string_view s, str_view(obj, max_bytes));
  return std::string(s);
}

// The UTF-8 text of a str, refused (before any buffer is sized) when over max_bytes.
Result<std::string> ObjectReader::decode(uint64_t obj, uint64_t max_bytes) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (!(t->flags & kUnicodeSubclass)) return fail(not_a("str", obj));
  MLFX_ASSIGN(uint64_t length, mem_.read_u64(obj + L_.str_length));
  MLFX_ASSIGN(uint32_t state, mem_.read_value<uint32_t>(obj + L_.str_state));
  const uint32_t kind = (state >> 2) & 7;
  const bool compact = state & (1u << 5), ascii = state & (1u << 6);
  // Every character takes at least one UTF-8 byte.
  if (length > max_bytes)
    return fail(Errc::kUnsupported, "str at " + hex_address(obj) + " is " + std::to_string(length) +
                                         " characters long, over the cap of " + std::to_string(max_bytes) + " bytes");
  if (!compact) return fail(Errc::kUnsupported, "legacy (non-compact) str at " + hex_address(obj));
  if (ascii) {
    MLFX_TRY(check_mapped(mem_, obj + L_.str_ascii_data, length, "str", obj));
    std::string s(length, '\0');
    MLFX_TRY(mem_.read(obj + L_.str_ascii_data, s.data(), length));
    return s;
  }
  if (kind != 1 && kind != 2 && kind != 4)
    return fail(Errc::kBadFormat, "str at " + hex_address(obj) + " has character size " + std::to_string(kind));
  MLFX_TRY(check_mapped(mem_, obj + L_.str_compact_data, length * kind, "str", obj));
  std::string raw(length * kind, '\0');
  MLFX_TRY(mem_.read(obj + L_.str_compact_data, raw.data(), raw.size()));
  std::string out;
  for (uint64_t i = 0; i < length; ++i) {
    const auto* p = reinterpret_cast<const uint8_t*>(raw.data()) + i * kind;
    uint32_t cp = kind == 1 ? p[0] : kind == 2 ? load_le<uint16_t>(p) : load_le<uint32_t>(p);
    append_utf8(out, cp);
  }
  if (out.size() > max_bytes)
    return fail(Errc::kUnsupported, "str at " + hex_address(obj) + " is " + std::to_string(out.size()) +
                                         " bytes long, over the cap of " + std::to_string(max_bytes));
  return out;
}

Result<json::Json> ObjectReader::integer(uint64_t obj) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (!(t->flags & kLongSubclass)) return fail(not_a("int", obj));
  MLFX_ASSIGN(uint64_t size_raw, mem_.read_u64(obj + L_.var_size));
  bool negative = false;
  uint64_t ndigits = 0;
  if (L_.long_style == LongStyle::kTagged) {  // lv_tag: digits << 3 | sign (0 +, 1 zero, 2 -)
    if ((size_raw & 3) == 3) return fail(Errc::kBadFormat, "int at " + hex_address(obj) + " has an invalid sign");
    negative = (size_raw & 3) == 2;
    ndigits = size_raw >> 3;
  } else {
    const int64_t size = static_cast<int64_t>(size_raw);
    negative = size < 0;
    ndigits = size < 0 ? uint64_t(-(size + 1)) + 1 : uint64_t(size);
  }
  if (ndigits > 2) {  // > 60 bits: keep exact, as a decimal string
    if (ndigits > 1024) return fail(Errc::kBadFormat, "int at " + hex_address(obj) + " is implausibly large");
    std::vector<uint32_t> digits(ndigits);
    MLFX_TRY(mem_.read(obj + L_.long_digits, digits.data(), ndigits * 4));
    std::string dec;
    while (std::any_of(digits.begin(), digits.end(), [](uint32_t d) { return d != 0; })) {
      uint64_t rem = 0;
      for (size_t i = digits.size(); i-- > 0;) {
        uint64_t cur = (rem << 30) | (digits[i] & 0x3fffffff);
        digits[i] = static_cast<uint32_t>(cur / 10);
        rem = cur % 10;
      }
      dec.insert(dec.begin(), char('0' + rem));
    }
    return json::Json((negative ? "-" : "") + dec);
  }
  uint64_t v = 0;
  for (uint64_t i = 0; i < ndigits; ++i) {
    MLFX_ASSIGN(uint32_t d, mem_.read_value<uint32_t>(obj + L_.long_digits + 4 * i));
    v |= uint64_t(d & 0x3fffffff) << (30 * i);
  }
  if (negative) return json::Json(-static_cast<int64_t>(v));
  return json::Json(v);
}

Result<double> ObjectReader::real(uint64_t obj) const {
  MLFX_TRY(exact_builtin(obj, "float"));
  return mem_.read_value<double>(obj + L_.float_value);
}

Result<std::vector<uint64_t>> ObjectReader::tuple_items(uint64_t obj) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (!(t->flags & kTupleSubclass)) return fail(not_a("tuple", obj));
  MLFX_ASSIGN(uint64_t n, mem_.read_u64(obj + L_.var_size));
  if (n > kMaxItems) return fail(Errc::kBadFormat, "tuple at " + hex_address(obj) + " is implausibly long");
  MLFX_TRY(check_mapped(mem_, obj + L_.tuple_items, n * 8, "tuple", obj));
  std::vector<uint64_t> items(n);
  MLFX_TRY(mem_.read(obj + L_.tuple_items, items.data(), n * 8));
  return items;
}

Result<std::vector<uint64_t>> ObjectReader::list_items(uint64_t obj) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (!(t->flags & kListSubclass)) return fail(not_a("list", obj));
  MLFX_ASSIGN(uint64_t n, mem_.read_u64(obj + L_.var_size));
  if (n > kMaxItems) return fail(Errc::kBadFormat, "list at " + hex_address(obj) + " is implausibly long");
  MLFX_ASSIGN(uint64_t arr, mem_.read_u64(obj + L_.list_items));
  if (n) MLFX_TRY(check_mapped(mem_, arr, n * 8, "list", obj));
  std::vector<uint64_t> items(n);
  if (n) MLFX_TRY(mem_.read(arr, items.data(), n * 8));
  return items;
}

Result<std::vector<uint64_t>> ObjectReader::set_items(uint64_t obj) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (t->name != "set" && t->name != "frozenset") return fail(not_a("set", obj));
  MLFX_ASSIGN(uint64_t mask, mem_.read_u64(obj + L_.set_mask));
  MLFX_ASSIGN(uint64_t table, mem_.read_u64(obj + L_.set_table));
  if (mask >= kMaxItems || ((mask + 1) & mask)) return fail(Errc::kBadFormat, "set at " + hex_address(obj) + " has a bad mask");
  MLFX_TRY(check_mapped(mem_, table, (mask + 1) * 16, "set", obj));
  std::vector<uint64_t> entries((mask + 1) * 2);  // {key, hash}
  MLFX_TRY(mem_.read(table, entries.data(), entries.size() * 8));
  std::vector<uint64_t> items;
  for (size_t i = 0; i < entries.size(); i += 2) {
    uint64_t key = entries[i];
    if (!key) continue;
    auto kt = type_info_of(key);  // the deleted-entry dummy is not a str; callers filter by type
    if (kt) items.push_back(key);
  }
  return items;
}

// The shared keys' entries paired with a split table's values, in insertion order.
Result<Items> ObjectReader::split_entries(const uint8_t* raw, uint64_t nentries, uint64_t entry_size, uint64_t key_at,
                                          uint64_t values) const {
  // Where value i is, and the insertion order (indices into the entries) where one is kept.
  uint64_t first_value = values;
  std::vector<uint8_t> order;
  bool has_order = false;
  if (L_.split_values_style == SplitValuesStyle::kOrderBefore) {
    // byte -2: count, byte -3-k: index of the k-th item
    MLFX_ASSIGN(uint8_t used, mem_.read_value<uint8_t>(values - 2));
    order.resize(used);
    if (used) MLFX_TRY(mem_.read(values - 2 - used, order.data(), used));
    std::reverse(order.begin(), order.end());
    has_order = true;
  } else if (L_.split_values_style == SplitValuesStyle::kHeader) {
    // {u8 capacity, size, embedded, valid}, values[capacity], then size order bytes
    uint8_t hdr[4];
    MLFX_TRY(mem_.read(values, hdr, sizeof hdr));
    const uint8_t capacity = hdr[0], used = hdr[1];
    if (capacity < nentries)
      return fail(Errc::kBadFormat, "split dict values at " + hex_address(values) + " hold " + std::to_string(capacity) +
                                        " slots for " + std::to_string(nentries) + " keys");
    first_value = values + 8;
    order.resize(used);
    if (used) MLFX_TRY(mem_.read(first_value + 8 * uint64_t(capacity), order.data(), used));
    has_order = true;
  }
  MLFX_TRY(check_mapped(mem_, first_value, nentries * 8, "split dict values", values));
  std::vector<uint64_t> vals(nentries);
  MLFX_TRY(mem_.read(first_value, vals.data(), nentries * 8));
  bool order_ok = has_order && order.size() <= nentries;
  for (uint8_t o : order) order_ok = order_ok && o < nentries;
  std::vector<uint64_t> idx;
  if (order_ok) {
    idx.assign(order.begin(), order.end());
  } else {
    for (uint64_t i = 0; i < nentries; ++i) idx.push_back(i);
  }
  Items items;
  for (uint64_t i : idx) {
    uint64_t k = load_le<uint64_t>(&raw[i * entry_size + key_at]);
    if (k && vals[i]) items.emplace_back(k, vals[i]);
  }
  return items;
}

// The keys object's entries: {hash, key, value} (3.8-3.10, and general keys of 3.11+) or
// {key, value} (unicode and split keys of 3.11+). `values` non-zero: a split table.
Result<Items> ObjectReader::dict_entries(uint64_t keys, uint64_t values, bool split) const {
  uint64_t nentries = 0, entries = 0, entry_size = 24, key_at = 8;
  if (L_.dict_keys_style == DictKeysStyle::kSized) {
    // dk_refcnt, dk_size @8, dk_lookup, dk_usable, dk_nentries @32, indices @40 (dk_size of
    // 1, 2, 4 or 8 bytes each), then the entries.
    uint64_t hdr[5];
    MLFX_TRY(mem_.read(keys, hdr, sizeof hdr));
    const uint64_t size = hdr[1];
    nentries = hdr[4];
    if (size == 0 || (size & (size - 1)) || size > (1ull << 30) || nentries > size || nentries > kMaxItems)
      return fail(Errc::kBadFormat, "dict keys at " + hex_address(keys) + " are implausible");
    const uint64_t width = size <= 0xff ? 1 : size <= 0xffff ? 2 : size <= 0xffffffff ? 4 : 8;
    entries = keys + 40 + size * width;
  } else {
    // dk_log2_size u8 @8, dk_log2_index_bytes u8 @9, dk_kind u8 @10, dk_nentries @24, indices @32
    uint8_t hdr[32];
    MLFX_TRY(mem_.read(keys, hdr, sizeof hdr));
    const uint8_t log2_size = hdr[8], log2_index_bytes = hdr[9], kind = hdr[10];
    nentries = load_le<uint64_t>(hdr + 24);
    if (log2_size > 30 || log2_index_bytes > 34 || kind > 2 || nentries > (1ull << log2_size) ||
        nentries > kMaxItems)
      return fail(Errc::kBadFormat, "dict keys at " + hex_address(keys) + " are implausible");
    if (kind != 0) entry_size = 16, key_at = 0;
    entries = keys + 32 + (1ull << log2_index_bytes);
  }
  MLFX_TRY(check_mapped(mem_, entries, nentries * entry_size, "dict keys", keys));
  // The entries in place when they are contiguous in the image, else a copy.
  std::vector<uint8_t> copy;
  const uint8_t* raw = mem_.view(entries, nentries * entry_size);
  if (!raw && nentries) {
    copy.resize(nentries * entry_size);
    MLFX_TRY(mem_.read(entries, copy.data(), copy.size()));
    raw = copy.data();
  }
  if (split) return split_entries(raw, nentries, entry_size, key_at, values);
  Items items;
  for (uint64_t i = 0; i < nentries; ++i) {
    uint64_t k = load_le<uint64_t>(&raw[i * entry_size + key_at]);
    uint64_t v = load_le<uint64_t>(&raw[i * entry_size + key_at + 8]);
    if (k && v) items.emplace_back(k, v);
  }
  return items;
}

Result<Items> ObjectReader::dict_items(uint64_t obj) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (!(t->flags & kDictSubclass)) return fail(not_a("dict", obj));
  MLFX_ASSIGN(uint64_t keys, mem_.read_u64(obj + L_.dict_keys));
  MLFX_ASSIGN(uint64_t values, mem_.read_u64(obj + L_.dict_values));
  MLFX_ASSIGN(Items items, dict_entries(keys, values, values != 0));
  if (t->name != "collections.OrderedDict") return items;
  // OrderedDict: the true order is the node list (it differs after move_to_end).
  std::unordered_map<uint64_t, uint64_t> by_key(items.begin(), items.end());
  Items ordered;
  MLFX_ASSIGN(uint64_t node, mem_.read_u64(obj + L_.odict_first));
  while (node && ordered.size() <= items.size()) {
    MLFX_ASSIGN(uint64_t key, mem_.read_u64(node));
    auto it = by_key.find(key);
    if (it == by_key.end()) break;
    ordered.emplace_back(key, it->second);
    MLFX_ASSIGN(node, mem_.read_u64(node + 16));
  }
  // A damaged or mid-update list falls back to the dict's own (insertion) order.
  return ordered.size() == items.size() ? ordered : items;
}

Result<NamedItems> ObjectReader::named(const Items& items, uint64_t dict) const {
  NamedItems out;
  out.reserve(items.size());
  for (const auto& [k, v] : items) {
    auto name = str_view(k);
    if (name) {
      out.emplace_back(*name, v);
    } else if (name.error().code() == Errc::kUnsupported) {  // over a cap, or the budget spent
      if (budget_spent(name.error().message())) return fail(std::move(name).error());
      diag_.warn("dict at " + hex_address(dict) + ": key refused: " + name.error().to_string());
    }
  }
  return out;
}

Result<NamedItems> ObjectReader::str_dict(uint64_t obj) const {
  MLFX_ASSIGN(Items items, dict_items(obj));
  return named(items, obj);
}

Result<NamedItems> ObjectReader::instance_dict(uint64_t obj) const {
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  // Values that share the class's keys (no dict object made yet).
  auto shared_values = [&](uint64_t values) -> Result<NamedItems> {
    MLFX_ASSIGN(uint64_t keys, mem_.read_u64(t->addr + L_.ht_cached_keys));
    if (!keys) return fail(Errc::kBadFormat, "type of " + hex_address(obj) + " has no cached keys for its values");
    MLFX_ASSIGN(Items items, dict_entries(keys, values, true));
    return named(items, obj);
  };
  if (L_.instance_dict_style != InstanceDictStyle::kDictOffset && (t->flags & kManagedDict)) {
    MLFX_ASSIGN(uint64_t at24, mem_.read_u64(obj - 24));
    switch (L_.instance_dict_style) {
      case InstanceDictStyle::kPy311: {  // [values* @-32][dict* @-24][PyGC_Head @-16]
        if (at24) return str_dict(at24);
        MLFX_ASSIGN(uint64_t values, mem_.read_u64(obj - 32));
        if (!values) return NamedItems{};
        return shared_values(values);
      }
      case InstanceDictStyle::kPy312:  // a dict*, or values-1 (bit 0 set)
        if (at24 & 1) return shared_values(at24 + 1);
        if (at24) return str_dict(at24);
        return NamedItems{};
      case InstanceDictStyle::kPy313: {  // dict* @-24; inline values at obj + tp_basicsize
        if (at24) return str_dict(at24);
        if (!(t->flags & kInlineValues)) return NamedItems{};
        const uint64_t values = obj + t->basicsize;
        MLFX_ASSIGN(uint8_t valid, mem_.read_value<uint8_t>(values + 3));
        if (!valid) return NamedItems{};
        return shared_values(values);
      }
      case InstanceDictStyle::kDictOffset:
        break;
    }
  }
  if (t->dictoffset > 0) {
    MLFX_ASSIGN(uint64_t dict, mem_.read_u64(obj + uint64_t(t->dictoffset)));
    if (dict) return str_dict(dict);
  }
  return NamedItems{};
}

Result<std::optional<json::Json>> ObjectReader::plain_value(uint64_t obj, int depth) const {
  uint64_t budget = kMaxPlainBytes;
  return plain_value(obj, depth, budget);
}

// `budget` counts the bytes of the whole tree (kPlainItemBytes per value, plus string bytes):
// tuples that share items would otherwise expand exponentially, and strings that a tuple
// repeats would be copied each time.
Result<std::optional<json::Json>> ObjectReader::plain_value(uint64_t obj, int depth, uint64_t& budget) const {
  using Opt = std::optional<json::Json>;
  if (budget < kPlainItemBytes) return Opt{};
  budget -= kPlainItemBytes;
  MLFX_ASSIGN(const TypeInfo* t, type_info_of(obj));
  if (t->heap) return Opt{};
  const std::string& n = t->name;
  if (n == "NoneType") return Opt(json::Json(nullptr));
  if (n == "bool") {
    MLFX_ASSIGN(json::Json v, integer(obj));
    return Opt(json::Json(!(v.is_number_unsigned() && v.get<uint64_t>() == 0)));
  }
  if (n == "int") {
    MLFX_ASSIGN(json::Json v, integer(obj));
    return Opt(std::move(v));
  }
  if (n == "float") {
    MLFX_ASSIGN(double d, real(obj));
    if (!std::isfinite(d)) return Opt(json::Json(std::isnan(d) ? "nan" : d > 0 ? "inf" : "-inf"));
    return Opt(json::Json(d));
  }
  if (n == "str") {
    auto s = str_view(obj, std::min(budget, kMaxStrBytes));
    if (!s) return Opt{};  // too long to be a hyperparameter: listed by name only
    budget -= s->size();
    return Opt(json::Json(std::string(*s)));
  }
  if ((n == "tuple" || n == "list") && depth < kMaxPlainDepth) {
    MLFX_ASSIGN(uint64_t size, mem_.read_u64(obj + L_.var_size));
    if (size > budget / kPlainItemBytes) return Opt{};  // before reading the items
    MLFX_ASSIGN(auto items, n == "tuple" ? tuple_items(obj) : list_items(obj));
    if (items.size() > budget / kPlainItemBytes) return Opt{};
    json::Json arr = json::Json::array();
    for (uint64_t item : items) {
      MLFX_ASSIGN(auto v, plain_value(item, depth + 1, budget));
      if (!v) return Opt{};
      arr.push_back(std::move(*v));
    }
    return Opt(std::move(arr));
  }
  return Opt{};
}

}  // namespace mlfx::frontends::cpython
