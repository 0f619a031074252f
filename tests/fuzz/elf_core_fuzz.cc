// Fuzzes the ELF core layer and everything recovery reads through it.
//
// The input is a whole ELF core file. It is written to a memfd and opened by path
// (/proc/self/fd/N) with FileLayer, as recovery opens a core, then ElfCoreLayer::open parses
// the program headers and notes. On success every segment boundary is read through read(),
// view(), mapped_run() and is_mapped(); PythonRuntime::locate looks for the interpreter in the
// NT_FILE list; and on success the GC's tracked objects are walked for torch modules
// (ModuleWalker scan, roots, state_dict, architecture) and their tensors (TensorReader).
//
// Invariants beyond "no crash, leak or hang": the layer's segments are sorted, disjoint and
// fully readable, and view()/read()/mapped_run() agree with them.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "fuzz_support.h"
#include "image_walk.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"

namespace {

using namespace mlfx;

void check_segments(const layers::ElfCoreLayer& core) {
  const auto& segs = core.segments();
  uint8_t buf[64];
  for (size_t i = 0; i < segs.size(); ++i) {
    const layers::Segment& s = segs[i];
    const std::string where = "segment " + std::to_string(i) + " at " + std::to_string(s.start);
    if (s.size == 0) fuzz::invariant_failed("segments are not empty", where);
    if (i > 0 && segs[i - 1].start + segs[i - 1].size > s.start)
      fuzz::invariant_failed("segments are sorted and disjoint", where);
    const uint64_t last = s.start + s.size - 1;
    if (core.mapped_run(s.start, UINT64_MAX) < s.size || core.mapped_run(last, UINT64_MAX) < 1)
      fuzz::invariant_failed("mapped_run covers a segment", where);
    if (!core.view(s.start, s.size) || !core.view(last, 1) || !core.is_mapped(s.start, s.size))
      fuzz::invariant_failed("a whole segment can be viewed", where);
    if (!core.read(s.start, buf, std::min<uint64_t>(s.size, sizeof buf)) || !core.read(last, buf, 1))
      fuzz::invariant_failed("a segment can be read", where);
    if (core.view(s.start, s.size + 1) && !(i + 1 < segs.size() && segs[i + 1].start == s.start + s.size))
      fuzz::invariant_failed("view() stops at the end of a segment", where);
    // Across the boundaries: one byte before and after, and a read spanning the end.
    const bool before = s.start > 0 && core.is_mapped(s.start - 1, 1);
    const bool after = last + 1 != 0 && core.is_mapped(last + 1, 1);
    if (s.start > 0) (void)core.read(s.start - 1, buf, 2);
    if (core.read(last, buf, 2).has_value() != after)
      fuzz::invariant_failed("a read past a segment's end succeeds only into the next segment", where);
    if (i == 0 && before) fuzz::invariant_failed("nothing is mapped below the first segment", where);
    (void)core.read_cstring(s.start, 64);
  }
  (void)core.read(UINT64_MAX - 1, buf, 4);  // wraps around
}

void run(const std::string& path) {
  auto file = layers::FileLayer::open(path);
  if (!file) fuzz::invariant_failed("FileLayer opens the memfd", file.error().to_string());
  std::shared_ptr<const layers::Layer> f = std::move(*file);
  (void)layers::ElfCoreLayer::probe(*f);
  auto core = layers::ElfCoreLayer::open(f);
  if (!core) return;
  const layers::ElfCoreLayer& mem = **core;
  check_segments(mem);

  Diagnostics diag;
  auto rt = frontends::cpython::PythonRuntime::locate(mem, mem.info().files, diag);
  if (!rt) return;
  (void)rt->version();
  frontends::cpython::ObjectReader reader(mem, rt->layout());
  (void)rt->modules(reader);
  (void)rt->module_string(reader, "torch.version", "__version__");
  const std::vector<uint64_t> objects = rt->tracked_objects(diag);
  fuzz::walk_modules(reader, objects, diag);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::input_as_file(data, size);
  run(path);
  return 0;
}
