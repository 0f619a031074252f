#include "frontends/cpython/python_runtime.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>

#include "frontends/address_set.h"
#include "frontends/cpython/python_objects.h"
#include "frontends/elf/loaded_elf.h"

namespace mlfx::frontends::cpython {

namespace {

constexpr size_t kMaxTrackedObjects = 50'000'000;
// Memory kept per tracked object: its address in the list, and its slot in the seen set
// (open addressing, at most half full, doubled on growth).
constexpr uint64_t kBytesPerTracked = 40;
constexpr size_t kChargeEvery = 4096;
constexpr uint64_t kInterpScanBytes = 256 * 1024;
constexpr uint64_t kScanDictEntries = 1 << 20;  // dict entries the scans for sys dicts may read

// Load base of each mapped file: the start of its mapping at file offset 0.
std::vector<std::pair<std::string, uint64_t>> candidate_objects(const std::vector<layers::MappedFile>& files) {
  std::map<std::string, uint64_t> base;
  for (const auto& f : files)
    if (f.file_offset == 0 && (!base.count(f.path) || f.start < base[f.path])) base[f.path] = f.start;
  std::vector<std::pair<std::string, uint64_t>> out(base.begin(), base.end());
  // Interpreters live in python executables or libpython: try those first.
  std::stable_partition(out.begin(), out.end(), [](const auto& p) {
    auto slash = p.first.find_last_of('/');
    std::string leaf = slash == std::string::npos ? p.first : p.first.substr(slash + 1);
    return leaf.rfind("python", 0) == 0 || leaf.rfind("libpython", 0) == 0;
  });
  return out;
}

// What a file name tells of the interpreter in it: "python3.11", "libpython3.10.so.1.0",
// "libpython3.6m.so.1.0", "python3.13t" (free-threaded).
struct NameVersion {
  uint32_t hex = 0;  // major and minor only; 0 when the name has no version
  bool free_threaded = false;
};
NameVersion version_from_path(const std::string& path) {
  auto slash = path.find_last_of('/');
  std::string leaf = slash == std::string::npos ? path : path.substr(slash + 1);
  unsigned major = 0, minor = 0;
  int used = 0;
  auto at = leaf.find("python");
  if (at == std::string::npos || std::sscanf(leaf.c_str() + at, "python%u.%u%n", &major, &minor, &used) != 2) return {};
  if (major > 9 || minor > 99) return {};
  return {major << 24 | minor << 16, leaf.size() > at + used && leaf[at + used] == 't'};
}

std::string minor_text(uint32_t hex) {
  return std::to_string(hex >> 24) + "." + std::to_string((hex >> 16) & 0xff);
}

// _Py_DebugOffsets (3.13+), the first member of _PyRuntime: where, inside it, the offsets we
// use are published. Measured against each version's pycore_runtime.h / pycore_debug_offsets.h.
struct DebugOffsetsLayout {
  uint32_t hex_min, hex_max;
  uint32_t interpreters_head, interp_gc, interp_modules, interp_sysdict;
};
constexpr DebugOffsetsLayout kDebugOffsets[] = {
    {0x030D0000, 0x030DFFFF, 40, 80, 88, 96},    // 3.13
    {0x030E0000, 0x030EFFFF, 40, 88, 96, 104},   // 3.14: threads_main added before gc
};
constexpr char kDebugCookie[8] = {'x', 'd', 'e', 'b', 'u', 'g', 'p', 'y'};

// A published offset is used only when it lies inside the struct it describes.
constexpr uint64_t kMaxStructOffset = 1 << 20;

}  // namespace

std::string PythonRuntime::version() const {
  char b[32];
  std::snprintf(b, sizeof b, "%u.%u.%u", version_hex_ >> 24, (version_hex_ >> 16) & 0xff,
                (version_hex_ >> 8) & 0xff);
  return b;
}

Result<PythonRuntime> PythonRuntime::locate(const layers::Layer& mem,
                                            const std::vector<layers::MappedFile>& files,
                                            Diagnostics& diag) {
  if (files.empty())
    return fail(Errc::kNotFound, "the image lists no mapped files (no NT_FILE note), so the "
                                 "interpreter cannot be located");
  PythonRuntime rt(mem);
  std::string old_interpreter;  // a CPython without _PyRuntime (3.6 and before)
  NameVersion name;
  bool version_known = false;
  for (const auto& [path, base] : candidate_objects(files)) {
    auto elf = LoadedElf::at(mem, base, path);
    if (!elf) continue;  // not an ELF image, or its headers were not captured
    auto sym = elf->symbol("_PyRuntime");
    if (!sym || !*sym) {
      auto v = elf->symbol("Py_GetVersion");
      if (old_interpreter.empty() && v && *v) old_interpreter = path;
      continue;
    }
    rt.runtime_ = **sym;
    rt.binary_ = path;
    name = version_from_path(path);
    MLFX_ASSIGN(auto version_sym, elf->symbol("Py_Version"));
    if (version_sym) {
      if (auto v = mem.read_value<uint32_t>(*version_sym); v) {
        rt.version_hex_ = *v;
        version_known = true;
        rt.calibration_.push_back("version from Py_Version");
      } else {
        // Read-only file-backed pages are often left out of cores (gcore does); the file name
        // still tells the minor version.
        diag.warn("Py_Version is not in the image (read-only file data the core left out: --sysroot reads "
                  "it from the files); CPython version taken from the file name " + path);
      }
    }
    if (!rt.version_hex_ && name.hex) {
      rt.version_hex_ = name.hex;
      rt.calibration_.push_back("minor version from the file name " + path);
    }
    MLFX_ASSIGN(auto type_sym, elf->symbol("PyType_Type"));
    if (!type_sym) return fail(Errc::kBadFormat, path + ": no PyType_Type symbol");
    rt.type_type_ = *type_sym;
    break;
  }
  if (!rt.runtime_) {
    if (!old_interpreter.empty()) {
      const NameVersion old = version_from_path(old_interpreter);
      return fail(Errc::kUnsupported, "unsupported: CPython " + (old.hex ? minor_text(old.hex) + " " : std::string()) +
                                          "(" + old_interpreter + ") has no _PyRuntime: older than 3.7; supported: " +
                                          supported_versions());
    }
    return fail(Errc::kNotFound, "no CPython interpreter in this process: no mapped file exports "
                                 "_PyRuntime (not a Python process?)");
  }
  // _Py_DebugOffsets says what the interpreter is, where it publishes one (3.13+).
  uint8_t head[24];
  bool published = false;
  if (mem.read(rt.runtime_, head, sizeof head) && std::equal(head, head + 8, kDebugCookie)) {
    const uint64_t hex = load_le<uint64_t>(head + 8), free_threaded = load_le<uint64_t>(head + 16);
    if (hex >= 0x030D0000 && hex < 0x04000000) {
      published = true;
      if (free_threaded)
        return fail(Errc::kUnsupported, "unsupported: CPython " + minor_text(uint32_t(hex)) + " (" + rt.binary_ +
                                            ") is a free-threaded build (_Py_DebugOffsets.free_threaded): its "
                                            "objects have no GC list heads and a 32-byte header; supported: "
                                            "the default (GIL) builds of " + supported_versions());
      if (!version_known) {
        rt.version_hex_ = uint32_t(hex);
        version_known = true;
        rt.calibration_.push_back("version from _Py_DebugOffsets");
      }
    }
  }
  if (name.free_threaded && !published)
    return fail(Errc::kUnsupported, "unsupported: " + rt.binary_ + " is a free-threaded CPython build (its name ends "
                                        "in 't'); supported: the default (GIL) builds of " + supported_versions());
  if (rt.version_hex_ && rt.version_hex_ < 0x03080000)
    return fail(Errc::kUnsupported, "unsupported: CPython " + minor_text(rt.version_hex_) + " (" + rt.binary_ +
                                        ") is older than 3.8 (24-byte PyGC_Head, other object layouts); supported: " +
                                        supported_versions());

  // The tables to try: the version's own, or, with no version known (an interpreter without
  // Py_Version, renamed), every table of the versions without Py_Version; sys.hexversion,
  // read through each, decides.
  std::vector<const Layout*> tables;
  if (rt.version_hex_) {
    if (const Layout* l = layout_for(rt.version_hex_)) tables.push_back(l);
    else
      return fail(Errc::kUnsupported, "unsupported: CPython " + rt.version() + " (" + rt.binary_ +
                                          ") has no layout table; supported: " + supported_versions());
  } else {
    size_t n = 0;
    const Layout* const* all = all_layouts(n);
    for (size_t i = 0; i < n; ++i)
      if (all[i]->hex_max < 0x030B0000) tables.push_back(all[i]);
    rt.calibration_.push_back("version unknown (no Py_Version, no version in the file name): tried the tables of " +
                              std::string(tables.front()->name) + "-" + tables.back()->name);
  }
  std::string refused;
  for (const Layout* table : tables) {
    PythonRuntime candidate = rt;
    candidate.layout_ = *table;
    Diagnostics trial(diag.limits());
    Status fits = candidate.layout_.debug_offsets ? candidate.apply_debug_offsets() : Status{};
    if (fits) fits = candidate.check_layout(trial);
    if (fits) fits = candidate.check_version(trial, version_known);
    if (!fits) {
      if (tables.size() == 1) return fail(std::move(fits).error());
      refused += std::string(refused.empty() ? "" : "; ") + fits.error().to_string();
      continue;
    }
    for (const auto& w : trial.warnings()) diag.warn(w);
    return candidate;
  }
  return fail(Errc::kUnsupported, "unsupported: no CPython layout table fits " + rt.binary_ + " (" + refused + ")");
}

// The offsets the interpreter publishes about itself replace the table's.
Status PythonRuntime::apply_debug_offsets() {
  const DebugOffsetsLayout* d = nullptr;
  for (const auto& c : kDebugOffsets)
    if (version_hex_ >= c.hex_min && version_hex_ <= c.hex_max) d = &c;
  uint8_t cookie[8];
  if (!d || !mem_->read(runtime_, cookie, 8) || !std::equal(cookie, cookie + 8, kDebugCookie)) {
    if (!layout_.interp_modules || !layout_.gc_offset)
      return fail(Errc::kUnsupported, "CPython " + version() + " (" + binary_ + "): no _Py_DebugOffsets at _PyRuntime, "
                                           "and the layout table has no offsets of its own");
    return {};
  }
  auto value = [&](uint32_t at) -> uint32_t {
    auto v = mem_->read_u64(runtime_ + at);
    return v && *v > 0 && *v < kMaxStructOffset ? uint32_t(*v) : 0;
  };
  const uint32_t head = value(d->interpreters_head), gc = value(d->interp_gc), modules = value(d->interp_modules),
                 sysdict = value(d->interp_sysdict);
  if (!head || !gc || !modules || !sysdict)
    return fail(Errc::kUnsupported, "CPython " + version() + ": _Py_DebugOffsets at _PyRuntime is not readable or "
                                         "implausible");
  layout_.runtime_interpreters_head = head;
  layout_.gc_offset = gc;
  layout_.interp_modules = modules;
  layout_.interp_sysdict = sysdict;
  calibration_.push_back("interpreter offsets from _Py_DebugOffsets (interpreters.head +" + std::to_string(head) +
                         ", gc +" + std::to_string(gc) + ", modules +" + std::to_string(modules) + ", sysdict +" +
                         std::to_string(sysdict) + ")");
  return {};
}

// The list heads of a GC state at `gc`, if it is one. Where the version has generation0, it
// points at the first head; otherwise every head is a well-formed empty or non-empty circular
// list (its first element's prev and its last element's next lead back to it), and one holds
// objects. Some builds align PyGC_Head to 4 bytes (Debian's 3.13.5: `Py_ALIGNED(4)` on its
// typedef), which moves the generations 4 bytes down: both places are tried.
std::optional<std::array<uint64_t, 4>> PythonRuntime::gc_heads(uint64_t gc) const {
  const Layout& L = layout_;
  auto well_formed = [&](uint64_t h, bool& holds) {
    auto next = mem_->read_u64(h), prev = mem_->read_u64(h + 8);
    if (!next || !prev) return false;
    const uint64_t n = *next & ~uint64_t(3), p = *prev & ~uint64_t(3);
    if (n == h && p == h) return true;
    auto back = mem_->read_u64(n + 8), fwd = mem_->read_u64(p);
    holds = true;
    return back && fwd && (*back & ~uint64_t(3)) == h && (*fwd & ~uint64_t(3)) == h;
  };
  for (uint64_t shift : {uint64_t(0), uint64_t(4)}) {
    std::array<uint64_t, 4> heads;
    for (size_t i = 0; i < 4; ++i) heads[i] = gc + L.gc_lists[i] - shift;
    if (L.gc_generation0) {
      heads[3] = gc + L.gc_lists[3];  // after the 8-aligned generation0 pointer either way
      auto g0 = mem_->read_u64(gc + L.gc_generation0);
      if (g0 && *g0 == heads[0]) return heads;
      continue;
    }
    bool ok = true, holds = false;
    for (uint64_t h : heads) ok = ok && well_formed(h, holds);
    if (ok && holds) return heads;
  }
  return std::nullopt;
}

// Self-calibration: every table value used to find the GC is checked against the image.
Status PythonRuntime::check_layout(Diagnostics& diag) {
  const Layout& L = layout_;
  const std::string table = "layout table CPython " + std::string(L.name);
  // PyType_Type is its own type and is called "type".
  MLFX_ASSIGN(uint64_t tt, mem_->read_u64(type_type_ + L.ob_type));
  MLFX_ASSIGN(uint64_t tt_name, mem_->read_u64(type_type_ + L.tp_name));
  auto name = mem_->read_cstring(tt_name, 64);
  if (tt == type_type_ && !name && name.error().code() == Errc::kInvalidAddress)
    return fail(Errc::kNotFound, "the name of PyType_Type at " + hex_address(tt_name) + " is not in the image");
  if (tt != type_type_ || !name || *name != "type") {
    // Py_TRACE_REFS (debug) builds put two list pointers before every object header.
    auto traced = mem_->read_u64(type_type_ + 16 + L.ob_type);
    if (traced && *traced == type_type_)
      return fail(Errc::kUnsupported, "unsupported: CPython " + version() + " (" + binary_ +
                                          ") is a debug build (Py_TRACE_REFS: 32-byte object headers)");
    return fail(Errc::kUnsupported, table + " does not fit this image: PyType_Type at " + hex_address(type_type_) +
                                        " does not look like a type object");
  }
  // Its MRO is the tuple (type, object): the tuple layout reads it back.
  MLFX_ASSIGN(uint64_t mro, mem_->read_u64(type_type_ + L.tp_mro));
  auto mro_size = mem_->read_u64(mro + L.var_size);
  auto mro_first = mem_->read_u64(mro + L.tuple_items);
  if (!mro_size || *mro_size != 2 || !mro_first || *mro_first != type_type_)
    return fail(Errc::kUnsupported, table + " does not fit this image: PyType_Type's MRO at " + hex_address(mro) +
                                        " does not read as (type, object)");
  MLFX_ASSIGN(interp_, mem_->read_u64(runtime_ + L.runtime_interpreters_head));
  const uint64_t gc_base = L.gc_home == GcHome::kRuntime ? runtime_ : interp_;
  if (!interp_ || !mem_->is_mapped(interp_, std::max(L.interp_modules, L.interp_sysdict) + 8))
    return fail(Errc::kUnsupported, table + " does not fit this image: interpreters.head at _PyRuntime+" +
                                        std::to_string(L.runtime_interpreters_head) + " is " + hex_address(interp_));
  gc_ = gc_base + L.gc_offset;
  auto heads = gc_heads(gc_);
  if (!heads) {
    uint64_t found = 0;
    for (uint64_t o = 0; o < kInterpScanBytes && !found; o += 8)
      if (mem_->is_mapped(gc_base + o, 128) && (heads = gc_heads(gc_base + o))) found = gc_base + o;
    const std::string home = L.gc_home == GcHome::kRuntime ? "_PyRuntime+" : "interp+";
    if (!found)
      return fail(Errc::kUnsupported, table + " does not fit this image: no GC state at " + home +
                                          std::to_string(L.gc_offset) + " and none found by scanning");
    diag.warn(table + ": GC state found at " + home + std::to_string(found - gc_base) + " instead of the table's +" +
              std::to_string(L.gc_offset) + "; using the located one");
    calibration_.push_back("GC state located by scanning at " + home + std::to_string(found - gc_base));
    gc_ = found;
  }
  heads_ = *heads;
  if (heads_[0] != gc_ + L.gc_lists[0])
    calibration_.push_back("GC list heads at gc+" + std::to_string(heads_[0] - gc_) + " instead of the table's +" +
                           std::to_string(L.gc_lists[0]) + " (PyGC_Head aligned to 4 bytes in this build)");
  return {};
}

// sys.hexversion, read through the table, must be a version the table covers; it also gives
// the patch level where only the minor version was known. sys.modules and sys.__dict__ not
// where the table says are looked for in the interpreter state (by the keys they hold).
Status PythonRuntime::check_version(Diagnostics& diag, bool version_known) {
  const std::string table = "layout table CPython " + std::string(layout_.name);
  ObjectReader objects(*mem_, layout_, diag);
  auto holds = [&](uint32_t offset, std::string_view key) {
    auto dict = mem_->read_u64(interp_ + offset);
    if (!dict || !*dict) return false;
    auto items = objects.str_dict(*dict);
    if (!items) return false;
    for (const auto& [k, v] : *items)
      if (k == key) return true;
    return false;
  };
  // sys.modules is needed only to read torch's version: where neither the table nor a scan
  // finds it, the table's offset stays (and torch is reported as not imported).
  if (!holds(layout_.interp_modules, "sys"))
    if (auto found = find_interp_dict(objects, {"sys", "builtins"}, layout_.interp_sysdict)) {
      calibration_.push_back("sys.modules located by scanning at interp+" + std::to_string(*found));
      layout_.interp_modules = uint32_t(*found);
    }
  std::optional<uint64_t> hexversion;
  if (!holds(layout_.interp_sysdict, "hexversion"))
    if (auto found = find_interp_dict(objects, {"hexversion", "modules"}, layout_.interp_modules)) {
      calibration_.push_back("sys.__dict__ located by scanning at interp+" + std::to_string(*found));
      layout_.interp_sysdict = uint32_t(*found);
    }
  if (auto sysdict = mem_->read_u64(interp_ + layout_.interp_sysdict); sysdict && *sysdict)
    if (auto items = objects.str_dict(*sysdict))
      for (const auto& [k, v] : *items)
        if (k == "hexversion") {
          auto n = objects.integer(v);
          if (n && n->is_number_unsigned()) hexversion = n->get<uint64_t>();
        }
  if (!hexversion) {
    if (!version_known)
      return fail(Errc::kUnsupported, table + " does not fit this image: sys.hexversion is not readable through it "
                                              "(at interp+" + std::to_string(layout_.interp_sysdict) +
                                              " nor found by scanning)");
    diag.warn("sys.hexversion is not readable (no sys.__dict__ at interp+" + std::to_string(layout_.interp_sysdict) +
              " nor found by scanning): CPython " + version() + " not checked against it");
    calibration_.push_back("sys.hexversion not readable: the version is not checked against it");
    return {};
  }
  if (*hexversion < layout_.hex_min || *hexversion > layout_.hex_max)
    return fail(Errc::kUnsupported, table + " does not fit this image: sys.hexversion is " + hex_address(*hexversion));
  if (version_known && *hexversion != version_hex_)
    diag.warn("sys.hexversion " + hex_address(*hexversion) + " differs from the version found before (" +
              hex_address(version_hex_) + "); sys.hexversion used");
  if (!version_known || *hexversion != version_hex_) {
    version_hex_ = uint32_t(*hexversion);
    calibration_.push_back("version " + version() + " from sys.hexversion");
  } else {
    calibration_.push_back("sys.hexversion agrees");
  }
  return {};
}

// The offset in the interpreter state of a pointer to a dict holding every one of `keys`.
// The dicts looked into are bounded in number of entries altogether: a hostile image may
// point every slot at a huge dict.
std::optional<uint64_t> PythonRuntime::find_interp_dict(const ObjectReader& objects,
                                                        std::initializer_list<std::string_view> keys,
                                                        uint64_t avoid) const {
  uint64_t entries_left = kScanDictEntries;
  for (uint64_t o = 0; o < kInterpScanBytes; o += 8) {
    if (o == avoid) continue;
    auto p = mem_->read_u64(interp_ + o);
    if (!p) return std::nullopt;  // the end of the mapped interpreter state
    if (!*p || (*p & 7) || !mem_->is_mapped(*p, 48)) continue;
    auto t = objects.type_info_of(*p);
    if (!t || (*t)->name != "dict" || (*t)->heap) continue;
    auto used = mem_->read_u64(*p + layout_.dict_used);
    if (!used || *used > entries_left) continue;
    entries_left -= *used;
    auto items = objects.str_dict(*p);
    if (!items) continue;
    size_t hits = 0;
    for (std::string_view key : keys)
      for (const auto& [k, v] : *items)
        if (k == key) ++hits;
    if (hits == keys.size()) return o;
  }
  return std::nullopt;
}

Result<std::vector<std::pair<std::string_view, uint64_t>>> PythonRuntime::modules(const ObjectReader& objects) const {
  MLFX_ASSIGN(uint64_t dict, mem_->read_u64(interp_ + layout_.interp_modules));
  if (!dict) return fail(Errc::kBadFormat, "sys.modules is not set");
  return objects.str_dict(dict);
}

std::optional<std::string> PythonRuntime::module_string(const ObjectReader& objects, std::string_view module,
                                                         std::string_view attribute) const {
  auto mods = modules(objects);
  if (!mods) return std::nullopt;
  for (const auto& [name, obj] : *mods) {
    if (name != module) continue;
    auto dict = mem_->read_u64(obj + layout_.module_dict);
    if (!dict) return std::nullopt;
    auto attrs = objects.str_dict(*dict);
    if (!attrs) return std::nullopt;
    for (const auto& [key, value] : *attrs)
      if (key == attribute) {
        auto s = objects.str(value);
        if (s) return *s;
      }
  }
  return std::nullopt;
}

std::vector<uint64_t> PythonRuntime::tracked_objects(Diagnostics& diag) const {
  const Layout& L = layout_;
  const std::vector<uint64_t> heads(heads_.begin(), heads_.end());
  std::vector<uint64_t> objects;
  AddressSet seen;
  for (size_t i = 0; i < heads.size(); ++i) {
    const std::string list = i < 3 ? "GC list " + std::to_string(i) : "permanent generation";
    uint64_t head = heads[i];
    auto next = mem_->read_u64(head);
    while (next && (*next & ~uint64_t(3)) != head) {
      uint64_t node = *next & ~uint64_t(3);  // low bits are flags during a collection
      if (objects.size() >= kMaxTrackedObjects) {
        diag.warn(list + ": stopped after " + std::to_string(kMaxTrackedObjects) + " objects");
        return objects;
      }
      if (objects.size() % kChargeEvery == 0 &&
          !diag.spend(kChargeEvery * kBytesPerTracked, "walking the GC lists", diag.limits().memory_bytes / 2)) {
        diag.warn(list + ": stopped after " + std::to_string(objects.size()) + " objects (budget spent)");
        return objects;
      }
      if (node == 0) {
        diag.warn(list + ": null link; the rest of the list is skipped");
        break;
      }
      if (!seen.insert(node)) {
        diag.warn(list + ": link cycle at " + hex_address(node) + "; the rest of the list is skipped");
        break;
      }
      objects.push_back(node + L.gc_head_size);
      next = mem_->read_u64(node);
    }
    if (!next) diag.warn(list + ": broken link (" + next.error().to_string() + "); the rest of the list is skipped");
  }
  return objects;
}

}  // namespace mlfx::frontends::cpython
