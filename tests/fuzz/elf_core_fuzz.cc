// Fuzzes the ELF core layer and everything recovery reads through it.
//
// The input is a whole ELF core file. It is written to a memfd and opened by path
// (/proc/self/fd/N) with FileLayer, as recovery opens a core, then ElfCoreLayer::open parses
// the program headers and notes. On success every segment boundary is read through read(),
// view(), mapped_run() and is_mapped(); PythonRuntime::locate looks for the interpreter in the
// NT_FILE list; and on success the GC's tracked objects are walked for torch modules
// (ModuleWalker scan, roots, state_dict, architecture) and their tensors (TensorReader).
//
// A SysrootLayer then stacks on the core, over a sysroot made once in a temporary directory
// (a small ELF object with a build-id at the seeds' libpython path, a plain file at the python
// binary's path), and the walk reads through it: hostile NT_FILE entries meet real files,
// missing ones and the build-id check.
//
// Invariants beyond "no crash, leak or hang": the layer's segments are sorted, disjoint and
// fully readable, and view()/read()/mapped_run() agree with them; the sysroot layer shows every
// byte of the core unchanged, fills only gaps the core does not declare, and fills them with
// the file's bytes at the gap's file offset.
#include <elf.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "fuzz_support.h"
#include "image_walk.h"
#include "segment_checks.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "layers/sysroot_layer.h"

namespace {

using namespace mlfx;

// An ELF object of `size` bytes with a GNU build-id note; the rest is a byte pattern.
std::string elf_with_build_id(size_t size) {
  std::string out(size, '\0');
  for (size_t i = 0; i < size; ++i) out[i] = static_cast<char>(i * 131 + 7);
  Elf64_Ehdr e{};
  std::memcpy(e.e_ident, ELFMAG, SELFMAG);
  e.e_ident[EI_CLASS] = ELFCLASS64, e.e_ident[EI_DATA] = ELFDATA2LSB, e.e_type = ET_DYN;
  e.e_phoff = sizeof e, e.e_phentsize = sizeof(Elf64_Phdr), e.e_phnum = 1;
  Elf64_Phdr p{};
  p.p_type = PT_NOTE, p.p_offset = sizeof e + sizeof p, p.p_filesz = 36, p.p_align = 4;
  const uint32_t note[3] = {4, 20, NT_GNU_BUILD_ID};
  std::memcpy(&out[0], &e, sizeof e);
  std::memcpy(&out[sizeof e], &p, sizeof p);
  std::memcpy(&out[p.p_offset], note, sizeof note);
  std::memcpy(&out[p.p_offset + 12], "GNU", 4);
  return out;
}

// The sysroot, made on first use and removed at exit.
struct FuzzSysroot {
  std::string dir;
  FuzzSysroot() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base ? base : "/tmp") + "/mlfx-fuzz-sysroot-XXXXXX";
    if (!mkdtemp(tmpl.data())) fuzz::invariant_failed("mkdtemp for the sysroot", std::strerror(errno));
    dir = tmpl;
    namespace fs = std::filesystem;
    fs::create_directories(dir + "/usr/lib/x86_64-linux-gnu");
    fs::create_directories(dir + "/usr/bin");
    write(dir + "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0", elf_with_build_id(0x12000));
    write(dir + "/usr/bin/python3.11", std::string(0x2000, 'p'));
  }
  ~FuzzSysroot() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  static void write(const std::string& path, const std::string& bytes) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0)
      fuzz::invariant_failed("writing the sysroot", path);
  }
};

const std::string& fuzz_sysroot() {
  static const FuzzSysroot s;
  return s.dir;
}

void check_sysroot(const layers::ElfCoreLayer& core, const layers::ProcessImage& image, const layers::SysrootLayer& sys) {
  uint8_t a[64], b[64];
  for (const layers::Segment& s : core.segments()) {
    const std::string where = "segment at " + std::to_string(s.start);
    if (sys.view(s.start, s.size) != core.view(s.start, s.size) ||
        sys.mapped_run(s.start, UINT64_MAX) != core.mapped_run(s.start, UINT64_MAX))
      fuzz::invariant_failed("the sysroot layer shows the core's bytes unchanged", where);
  }
  const layers::MissingFileData missing = layers::missing_file_data(image);
  size_t checked = 0;
  for (size_t i = 0; i < missing.gaps.size(); ++i) {
    const layers::FileGap& g = missing.gaps[i];
    const std::string where = "gap at " + std::to_string(g.start);
    if (g.size == 0 || (i > 0 && missing.gaps[i - 1].start + missing.gaps[i - 1].size > g.start))
      fuzz::invariant_failed("gaps are sorted, disjoint and not empty", where);
    if (core.mapped_run(g.start, 1) || core.mapped_run(g.start + g.size - 1, 1))
      fuzz::invariant_failed("gaps lie outside the core's data", where);
    if (checked >= 16 || !sys.is_mapped(g.start, 1)) continue;
    ++checked;
    const std::string& path = core.info().files[g.file].path;
    auto file = layers::FileLayer::open(fuzz_sysroot() + path);
    if (!file) fuzz::invariant_failed("a filled gap comes from a sysroot file", where + " " + path);
    const uint64_t n = std::min<uint64_t>({sizeof a, sys.mapped_run(g.start, sizeof a), g.size});
    if (!sys.read(g.start, a, n) || !(*file)->read(g.file_offset, b, n) || std::memcmp(a, b, n) != 0)
      fuzz::invariant_failed("a gap is filled with the file's bytes at its file offset", where + " " + path);
  }
  for (size_t i = 0; i < sys.files().size(); ++i)
    if (!sys.files()[i].attached && (sys.files()[i].bytes || sys.was_read(i)))
      fuzz::invariant_failed("a file not attached provides nothing", sys.files()[i].path);
}

void run(const std::string& path) {
  auto file = layers::FileLayer::open(path);
  if (!file) fuzz::invariant_failed("FileLayer opens the memfd", file.error().to_string());
  std::shared_ptr<const layers::Layer> f = std::move(*file);
  (void)layers::ElfCoreLayer::probe(*f);
  auto opened = layers::ElfCoreLayer::open(f);
  if (!opened) return;
  std::shared_ptr<const layers::ElfCoreLayer> core = std::move(*opened);
  fuzz::check_segments(*core);
  const layers::ProcessImage image = layers::ElfCoreLayer::process_image(core);
  auto sys = layers::SysrootLayer::open(image, fuzz_sysroot());
  if (!sys) fuzz::invariant_failed("the sysroot opens", sys.error().to_string());
  check_sysroot(*core, image, **sys);
  const layers::SysrootLayer& mem = **sys;

  Diagnostics diag;
  auto rt = frontends::cpython::PythonRuntime::locate(mem, core->info().files, diag);
  if (!rt) return;
  (void)rt->version();
  frontends::cpython::ObjectReader reader(mem, rt->layout(), diag);
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
