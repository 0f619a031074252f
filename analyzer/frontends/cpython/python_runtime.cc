#include "frontends/cpython/python_runtime.h"

#include <algorithm>
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

// "python3.11", "libpython3.11.so.1.0" -> 0x030B0000; 0 when the name has no version.
uint32_t version_from_path(const std::string& path) {
  auto slash = path.find_last_of('/');
  std::string leaf = slash == std::string::npos ? path : path.substr(slash + 1);
  unsigned major = 0, minor = 0;
  auto at = leaf.find("python");
  if (at == std::string::npos || std::sscanf(leaf.c_str() + at, "python%u.%u", &major, &minor) != 2) return 0;
  if (major > 9 || minor > 99) return 0;
  return major << 24 | minor << 16;
}

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
  for (const auto& [path, base] : candidate_objects(files)) {
    auto elf = LoadedElf::at(mem, base, path);
    if (!elf) continue;  // not an ELF image, or its headers were not captured
    auto sym = elf->symbol("_PyRuntime");
    if (!sym || !*sym) continue;
    rt.runtime_ = **sym;
    rt.binary_ = path;
    MLFX_ASSIGN(auto version_sym, elf->symbol("Py_Version"));
    if (!version_sym)
      return fail(Errc::kUnsupported, path + " has _PyRuntime but no Py_Version: CPython older than "
                                             "3.11, not supported yet (supported: " +
                                             std::string(supported_versions()) + ")");
    if (auto v = mem.read_value<uint32_t>(*version_sym); v) {
      rt.version_hex_ = *v;
    } else {
      // Read-only file-backed pages are often left out of cores (gcore does); the file name
      // still tells the minor version.
      rt.version_hex_ = version_from_path(path);
      if (!rt.version_hex_)
        return fail(Errc::kUnsupported, path + ": Py_Version is not in the image and the file name "
                                               "does not tell the version");
      diag.warn("Py_Version is not in the image (read-only file data the core left out: --sysroot reads "
                "it from the files); CPython version taken from the file name " + path);
    }
    MLFX_ASSIGN(auto type_sym, elf->symbol("PyType_Type"));
    if (!type_sym) return fail(Errc::kBadFormat, path + ": no PyType_Type symbol");
    rt.type_type_ = *type_sym;
    break;
  }
  if (!rt.runtime_)
    return fail(Errc::kNotFound, "no CPython interpreter in this process: no mapped file exports "
                                 "_PyRuntime (not a Python process?)");
  rt.layout_ = layout_for(rt.version_hex_);
  if (!rt.layout_)
    return fail(Errc::kUnsupported, "CPython " + rt.version() + " (" + rt.binary_ +
                                        ") is not supported yet; supported: " + supported_versions());
  MLFX_TRY(rt.check_layout(diag));
  return rt;
}

// Self-calibration: every table value used to find the GC is checked against the image.
Status PythonRuntime::check_layout(Diagnostics& diag) {
  const Layout& L = *layout_;
  const std::string table = "layout table CPython " + std::string(L.name);
  // PyType_Type is its own type and is called "type".
  MLFX_ASSIGN(uint64_t tt, mem_->read_u64(type_type_ + L.ob_type));
  MLFX_ASSIGN(uint64_t tt_name, mem_->read_u64(type_type_ + L.tp_name));
  auto name = mem_->read_cstring(tt_name, 64);
  if (tt == type_type_ && !name && name.error().code() == Errc::kInvalidAddress)
    return fail(Errc::kNotFound, "the name of PyType_Type at " + hex_address(tt_name) + " is not in the image");
  if (tt != type_type_ || !name || *name != "type")
    return fail(Errc::kUnsupported, table + " does not fit this image: PyType_Type at " + hex_address(type_type_) +
                                        " does not look like a type object");
  MLFX_ASSIGN(interp_, mem_->read_u64(runtime_ + L.runtime_interpreters_head));
  if (!interp_ || !mem_->is_mapped(interp_, L.interp_gc + 112))
    return fail(Errc::kUnsupported, table + " does not fit this image: interpreters.head at _PyRuntime+" +
                                        std::to_string(L.runtime_interpreters_head) + " is " + hex_address(interp_));
  // generation0 points at generations[0].head, 72 bytes before itself.
  auto fits = [&](uint64_t gc) {
    auto g0 = mem_->read_u64(gc + L.gc_generation0);
    return g0 && *g0 == gc + L.gc_generations;
  };
  gc_ = interp_ + L.interp_gc;
  if (!fits(gc_)) {
    uint64_t found = 0;
    for (uint64_t o = L.gc_generation0; o < kInterpScanBytes && !found; o += 8) {
      uint64_t gc = interp_ + o - L.gc_generation0;
      if (mem_->is_mapped(interp_ + o, 8) && fits(gc)) found = gc;
    }
    if (!found)
      return fail(Errc::kUnsupported, table + " does not fit this image: no GC state at interp+" +
                                          std::to_string(L.interp_gc) + " and none found by scanning");
    diag.warn(table + ": GC state found at interp+" + std::to_string(found - interp_) +
              " instead of the table's +" + std::to_string(L.interp_gc) + "; using the located one");
    gc_ = found;
  }
  return {};
}

Result<std::vector<std::pair<std::string_view, uint64_t>>> PythonRuntime::modules(const ObjectReader& objects) const {
  MLFX_ASSIGN(uint64_t dict, mem_->read_u64(interp_ + layout_->interp_modules));
  if (!dict) return fail(Errc::kBadFormat, "sys.modules is not set");
  return objects.str_dict(dict);
}

std::optional<std::string> PythonRuntime::module_string(const ObjectReader& objects, std::string_view module,
                                                         std::string_view attribute) const {
  auto mods = modules(objects);
  if (!mods) return std::nullopt;
  for (const auto& [name, obj] : *mods) {
    if (name != module) continue;
    auto dict = mem_->read_u64(obj + layout_->module_dict);
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
  const Layout& L = *layout_;
  std::vector<uint64_t> heads;
  for (int g = 0; g < 3; ++g) heads.push_back(gc_ + L.gc_generations + g * L.gc_generation_size);
  heads.push_back(gc_ + L.gc_permanent);
  std::vector<uint64_t> objects;
  AddressSet seen;
  for (size_t i = 0; i < heads.size(); ++i) {
    const std::string list = i < 3 ? "GC generation " + std::to_string(i) : "permanent generation";
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
