// Finds the CPython interpreter in a process image and enumerates the objects its garbage
// collector tracks.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "frontends/cpython/layout.h"
#include "layers/process_image.h"
#include "base/diagnostics.h"

namespace mlfx::frontends::cpython {

class PythonRuntime {
 public:
  // Looks for `_PyRuntime` in the dynamic symbols of every mapped ELF file (python
  // executables and libpython first), finds the version (Py_Version, _Py_DebugOffsets, the
  // file name, sys.hexversion), picks the layout table, applies what the interpreter
  // publishes about itself and checks every value used against the image. Builds that stay
  // unsupported (older than 3.8, free-threaded, debug builds) are refused as kUnsupported
  // with the reason.
  static Result<PythonRuntime> locate(const layers::Layer& mem,
                                      const std::vector<layers::MappedFile>& files, Diagnostics& diag);

  // The table as it fits this image (offsets the image published or that were located
  // applied): the reference stays valid as long as this object.
  const Layout& layout() const { return layout_; }
  uint32_t version_hex() const { return version_hex_; }
  std::string version() const;  // "3.11.2"
  const std::string& binary() const { return binary_; }
  uint64_t runtime() const { return runtime_; }
  uint64_t interpreter() const { return interp_; }
  uint64_t gc_state() const { return gc_; }
  uint64_t type_type() const { return type_type_; }  // &PyType_Type
  // How the version and the offsets were established, one line each (report.json).
  const std::vector<std::string>& calibration() const { return calibration_; }

  // sys.modules as (name, module object) pairs; the names view the reader's string cache.
  Result<std::vector<std::pair<std::string_view, uint64_t>>> modules(const class ObjectReader& objects) const;
  // A str attribute of an imported module (e.g. torch.version.__version__), if readable.
  std::optional<std::string> module_string(const class ObjectReader& objects, std::string_view module,
                                           std::string_view attribute) const;

  // Every object in the GC lists (generations, or young and old spaces) and the permanent
  // generation, in list order. Broken links and cycles end a list with a diagnostic; the
  // result is partial, not an error. What the walk keeps is charged to diag's budget: a
  // spent budget ends it too.
  std::vector<uint64_t> tracked_objects(Diagnostics& diag) const;

 private:
  explicit PythonRuntime(const layers::Layer& mem) : mem_(&mem) {}
  Status apply_debug_offsets();
  Status check_layout(Diagnostics& diag);
  Status check_version(Diagnostics& diag, bool version_known);
  std::optional<std::array<uint64_t, 4>> gc_heads(uint64_t gc) const;
  std::optional<uint64_t> find_interp_dict(const ObjectReader& objects, std::initializer_list<std::string_view> keys,
                                           uint64_t avoid) const;

  const layers::Layer* mem_;
  Layout layout_{};
  uint32_t version_hex_ = 0;
  std::string binary_;
  uint64_t runtime_ = 0, interp_ = 0, gc_ = 0, type_type_ = 0;
  std::array<uint64_t, 4> heads_{};  // the GC lists: three generations (young, old) and the permanent one
  std::vector<std::string> calibration_;
};

}  // namespace mlfx::frontends::cpython
