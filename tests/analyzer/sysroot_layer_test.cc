// SysrootLayer: file-backed memory a core left out, read from a sysroot directory; the core
// always wins, a different build of a file is refused, hostile NT_FILE notes are survived.
#include "layers/elf_core_layer.h"
#include "layers/sysroot_layer.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include "core_builder.h"
#include "layers/file_layer.h"
#include "test_util.h"

namespace mlfx::layers {
namespace {

using testing::CoreBuilder;

constexpr uint64_t kBase = 0x7f0000000000;
const std::string kLib = "/usr/lib/libfoo.so";
const std::string kIdA(20, '\x11'), kIdB(20, '\x22');

class Sysroot : public ::testing::Test {
 protected:
  void SetUp() override { testing::fs::create_directories(root / "usr/lib"); }

  void put(const std::string& path, const std::string& bytes) { testing::write_file(root.path() + path, bytes); }

  std::shared_ptr<const ElfCoreLayer> core(const CoreBuilder& b) {
    const std::string path = dir / ("core" + std::to_string(cores_++));
    testing::write_file(path, b.build());
    auto file = FileLayer::open(path);
    EXPECT_TRUE(file) << file.error().to_string();
    auto c = ElfCoreLayer::open(std::shared_ptr<const Layer>(std::move(*file)));
    EXPECT_TRUE(c) << c.error().to_string();
    return std::shared_ptr<const ElfCoreLayer>(std::move(*c));
  }

  std::unique_ptr<SysrootLayer> sysroot(std::shared_ptr<const ElfCoreLayer> c) {
    auto s = SysrootLayer::open(ElfCoreLayer::process_image(std::move(c)), root.path());
    EXPECT_TRUE(s) << s.error().to_string();
    return std::move(*s);
  }

  // The library mapped three times, as a kernel core or gcore leaves it: the first mapping
  // with only its first page in the core, the second with no PT_LOAD at all (gcore), the third
  // declared writable and left out. Plus an anonymous mapping.
  CoreBuilder library_core(const std::string& lib_bytes) {
    CoreBuilder b;
    b.files = {{kBase, kBase + 0x2000, 0, kLib}, {kBase + 0x10000, kBase + 0x12000, 2, kLib},
               {kBase + 0x20000, kBase + 0x21000, 4, kLib}};
    b.loads = {{kBase, lib_bytes.substr(0, 0x1000), 0x2000, PF_R},
               {kBase + 0x20000, "", 0x1000, PF_R | PF_W},
               {0x1000000, testing::pattern(0x1000, 9), 0, PF_R | PF_W}};
    return b;
  }

  static std::string read(const Layer& l, uint64_t addr, uint64_t n) {
    std::string s(n, '\0');
    auto st = l.read(addr, s.data(), n);
    return st ? s : "<" + st.error().to_string() + ">";
  }

  testing::TempDir dir, root;
  int cores_ = 0;
};

TEST_F(Sysroot, FillsWhatTheCoreLeftOutAtTheRightFileOffset) {
  const std::string lib = testing::elf_object(kIdA, 0x5000, 3);
  put(kLib, lib);
  auto c = core(library_core(lib));
  auto s = sysroot(c);
  EXPECT_FALSE(c->is_mapped(kBase + 0x1000, 1));
  EXPECT_EQ(read(*s, kBase + 0x1000, 0x1000), lib.substr(0x1000, 0x1000));
  EXPECT_EQ(read(*s, kBase + 0x10000, 0x2000), lib.substr(0x2000, 0x2000));
  // A read across the end of the core's data joins it with the file's.
  EXPECT_EQ(read(*s, kBase + 0xff8, 16), lib.substr(0xff8, 16));
  // Writable mappings may hold changes the file does not: never filled.
  EXPECT_FALSE(s->is_mapped(kBase + 0x20000, 1));
  // Nothing outside the mappings.
  EXPECT_FALSE(s->is_mapped(kBase + 0x2000, 1));
  EXPECT_FALSE(s->is_mapped(kBase + 0x12000, 1));
  ASSERT_EQ(s->files().size(), 1u);
  const SysrootFile& f = s->files()[0];
  EXPECT_EQ(f.path, kLib);
  EXPECT_EQ(f.host_path, root.path() + kLib);
  EXPECT_TRUE(f.attached);
  EXPECT_TRUE(f.verified) << f.detail;
  EXPECT_EQ(f.build_id, std::string(40, '1'));
  EXPECT_EQ(f.bytes, 0x3000u);
  EXPECT_TRUE(s->was_read(0));
  EXPECT_TRUE(s->warnings().empty());
}

TEST_F(Sysroot, ReportsFilesOnlyOnceRead) {
  const std::string lib = testing::elf_object(kIdA, 0x5000, 3);
  put(kLib, lib);
  auto s = sysroot(core(library_core(lib)));
  EXPECT_FALSE(s->was_read(0));
  EXPECT_EQ(read(*s, kBase, 64), lib.substr(0, 64));  // from the core
  EXPECT_FALSE(s->was_read(0));
  EXPECT_TRUE(s->is_mapped(kBase + 0x10000, 0x2000));  // checks are not reads
  EXPECT_FALSE(s->was_read(0));
  (void)read(*s, kBase + 0x10000, 8);
  EXPECT_TRUE(s->was_read(0));
}

TEST_F(Sysroot, NeverShadowsBytesTheCoreHolds) {
  const std::string lib = testing::elf_object(kIdA, 0x5000, 3);
  put(kLib, lib);
  CoreBuilder b = library_core(lib);
  b.loads[0].data[0x800] = static_cast<char>(~lib[0x800]);  // the process wrote here
  auto c = core(b);
  auto s = sysroot(c);
  EXPECT_EQ(read(*s, kBase + 0x800, 1), std::string(1, static_cast<char>(~lib[0x800])));
  EXPECT_EQ(read(*s, 0x1000000, 0x1000), testing::pattern(0x1000, 9));
  // Every byte the core has reads the same through the sysroot layer, at the same pointer.
  for (const Segment& seg : c->segments()) {
    EXPECT_EQ(s->mapped_run(seg.start, UINT64_MAX), c->mapped_run(seg.start, UINT64_MAX));
    EXPECT_EQ(s->view(seg.start, seg.size), c->view(seg.start, seg.size));
  }
  // A truncated core: the bytes a PT_LOAD declares but the file lost are not filled either
  // (they may have differed from the file).
  CoreBuilder t = library_core(lib);
  t.loads = {{kBase, lib.substr(0, 0x1000), 0x2000, PF_R}};
  std::string bytes = t.build();
  bytes.resize(bytes.size() - 0x800);
  testing::write_file(dir / "truncated", bytes);
  auto file = FileLayer::open(dir / "truncated");
  ASSERT_TRUE(file);
  auto tc = ElfCoreLayer::open(std::shared_ptr<const Layer>(std::move(*file)));
  ASSERT_TRUE(tc);
  auto ts = sysroot(std::shared_ptr<const ElfCoreLayer>(std::move(*tc)));
  EXPECT_TRUE(ts->is_mapped(kBase, 0x800));
  EXPECT_FALSE(ts->is_mapped(kBase + 0x800, 1));
  EXPECT_EQ(read(*ts, kBase + 0x1000, 16), lib.substr(0x1000, 16));
}

TEST_F(Sysroot, RefusesAFileWithAnotherBuildId) {
  const std::string lib = testing::elf_object(kIdA, 0x5000, 3);
  put(kLib, testing::elf_object(kIdB, 0x5000, 3));  // another build at the same path
  auto s = sysroot(core(library_core(lib)));
  ASSERT_EQ(s->files().size(), 1u);
  const SysrootFile& f = s->files()[0];
  EXPECT_FALSE(f.attached);
  EXPECT_FALSE(f.verified);
  EXPECT_TRUE(f.refused);
  EXPECT_EQ(f.bytes, 0u);
  EXPECT_NE(f.detail.find("refused: build-id " + std::string(40, '2') + " differs from the evidence's " +
                          std::string(40, '1')),
            std::string::npos)
      << f.detail;
  EXPECT_FALSE(s->is_mapped(kBase + 0x1000, 1));
  EXPECT_FALSE(s->is_mapped(kBase + 0x10000, 1));
  EXPECT_EQ(read(*s, kBase, 64), lib.substr(0, 64));  // the core's own bytes still read

  // A file with no build-id at all, where the core has one: refused too.
  put(kLib, testing::elf_object("", 0x5000, 3));
  s = sysroot(core(library_core(lib)));
  EXPECT_FALSE(s->files()[0].attached);
  EXPECT_NE(s->files()[0].detail.find("build-id (none) differs"), std::string::npos) << s->files()[0].detail;

  // Not an ELF file where the core maps one.
  CoreBuilder b = library_core(testing::elf_object("", 0x5000, 3));
  put(kLib, testing::pattern(0x5000, 1));
  s = sysroot(core(b));
  EXPECT_FALSE(s->files()[0].attached);
  EXPECT_TRUE(s->files()[0].refused);
  EXPECT_NE(s->files()[0].detail.find("not one"), std::string::npos) << s->files()[0].detail;
}

// Issue 11: a file the core gives nothing to check against is not read (an NT_FILE entry
// may name any lab-side path, e.g. /root/.ssh/id_ed25519).
TEST_F(Sysroot, RefusesFilesItCannotCheck) {
  const std::string lib = testing::elf_object(kIdA, 0x5000, 3);
  put(kLib, lib);
  // The core holds none of the file's first page (gcore without the ELF-header rule).
  CoreBuilder b = library_core(lib);
  b.loads.erase(b.loads.begin());
  auto s = sysroot(core(b));
  ASSERT_EQ(s->files().size(), 1u);
  EXPECT_FALSE(s->files()[0].attached);
  EXPECT_FALSE(s->files()[0].verified);
  EXPECT_TRUE(s->files()[0].refused);
  EXPECT_NE(s->files()[0].detail.find("no copy of its first page"), std::string::npos) << s->files()[0].detail;
  EXPECT_FALSE(s->is_mapped(kBase, 1));

  // The core holds the ELF header but no build-id note.
  const std::string plain = testing::elf_object("", 0x5000, 3);
  put(kLib, plain);
  s = sysroot(core(library_core(plain)));
  EXPECT_FALSE(s->files()[0].attached);
  EXPECT_TRUE(s->files()[0].refused);
  EXPECT_NE(s->files()[0].detail.find("no build-id note"), std::string::npos) << s->files()[0].detail;
  EXPECT_FALSE(s->is_mapped(kBase + 0x10000, 16));
}

TEST_F(Sysroot, MissingOddAndShortFiles) {
  CoreBuilder b;
  b.files = {{kBase, kBase + 0x1000, 0, "/usr/lib/missing.so"},
             {kBase + 0x10000, kBase + 0x11000, 0, "/usr/lib/dir.so"},
             {kBase + 0x20000, kBase + 0x21000, 0, "/usr/lib/fifo"},
             {kBase + 0x30000, kBase + 0x33000, 0, "/usr/lib/short.dat"}};
  b.loads = {{0x1000000, testing::pattern(0x100, 1), 0, PF_R | PF_W}};
  testing::fs::create_directories(root / "usr/lib/dir.so");
  ASSERT_EQ(mkfifo((root / "usr/lib/fifo").c_str(), 0600), 0);  // opening it would block
  const std::string data = testing::pattern(0x1800, 5);
  put("/usr/lib/short.dat", data);
  auto s = sysroot(core(b));
  ASSERT_EQ(s->files().size(), 4u);
  EXPECT_FALSE(s->files()[0].attached);
  EXPECT_FALSE(s->files()[0].refused);
  EXPECT_NE(s->files()[0].detail.find("not in the sysroot"), std::string::npos) << s->files()[0].detail;
  EXPECT_FALSE(s->files()[1].attached);
  EXPECT_EQ(s->files()[1].detail, "not a regular file");
  EXPECT_FALSE(s->files()[2].attached);
  EXPECT_EQ(s->files()[2].detail, "not a regular file");
  // Not an ELF object the core could vouch for: a lab file is never read into the process.
  EXPECT_FALSE(s->files()[3].attached);
  EXPECT_TRUE(s->files()[3].refused);
  EXPECT_NE(s->files()[3].detail.find("first page"), std::string::npos);
  EXPECT_FALSE(s->is_mapped(kBase + 0x30000, 1));

  EXPECT_FALSE(SysrootLayer::open(ElfCoreLayer::process_image(core(b)), root / "usr/lib/short.dat"));
  EXPECT_FALSE(SysrootLayer::open(ElfCoreLayer::process_image(core(b)), root / "nowhere"));
}

TEST_F(Sysroot, MissingFileDataWithoutASysroot) {
  const std::string lib = testing::elf_object(kIdA, 0x5000, 3);
  auto c = core(library_core(lib));
  MissingFileData m = missing_file_data(ElfCoreLayer::process_image(c));
  EXPECT_EQ(m.bytes, 0x3000u);
  EXPECT_EQ(m.paths, std::vector<std::string>{kLib});
  ASSERT_EQ(m.gaps.size(), 2u);
  EXPECT_EQ(m.gaps[0].start, kBase + 0x1000);
  EXPECT_EQ(m.gaps[0].file_offset, 0x1000u);
  EXPECT_EQ(m.gaps[1].start, kBase + 0x10000);
  EXPECT_EQ(m.gaps[1].file_offset, 0x2000u);
}

TEST_F(Sysroot, HostileNtFileEntries) {
  const std::string lib = testing::elf_object(kIdA, 0x5000, 3);
  put(kLib, lib);
  testing::write_file(dir / "secret", "outside the sysroot");
  CoreBuilder b;
  b.files = {{0x10000, 0x11000, 0, "relative/lib.so"},
             {0x20000, 0x21000, 0, "/usr/lib/../../../../../../../" + dir.path() + "/secret"},
             {0x30000, 0x31000, 0, kLib + " (deleted)"},
             {0x40000, 0x42000, 0, kLib},
             {0x40000, 0x41000, 1, kLib},   // inside the previous one: skipped
             {0x41000, 0x43000, 0, kLib},   // overlaps its end: clipped, the first one wins
             {0x50000, 0x50000, 0, kLib},   // empty
             {0x60000, UINT64_MAX, 0, kLib}};  // huge: clipped to the file
  // The core holds the library's first page (its build-id), as the kernel and gcore keep it.
  b.loads = {{0x40000, lib.substr(0, 0x1000), 0, PF_R}, {0x1000000, testing::pattern(0x100, 1), 0, PF_R | PF_W}};
  auto s = sysroot(core(b));
  for (uint64_t a : {0x10000ull, 0x20000ull, 0x30000ull, 0x50000ull}) EXPECT_FALSE(s->is_mapped(a, 1)) << a;
  EXPECT_EQ(read(*s, 0x40000, 0x2000), lib.substr(0, 0x2000));
  EXPECT_EQ(read(*s, 0x42000, 0x1000), lib.substr(0x1000, 0x1000));
  EXPECT_EQ(read(*s, 0x60000, 0x5000), lib);
  EXPECT_FALSE(s->is_mapped(0x65000, 1));
  const std::string all = [&] {
    std::string w;
    for (const auto& x : s->warnings()) w += x + "\n";
    return w;
  }();
  for (const char* why : {"is not absolute", "contains '..'", "deleted before the capture", "overlaps an earlier entry",
                          "empty or reversed"})
    EXPECT_NE(all.find(why), std::string::npos) << why << " not in:\n" << all;

  // Reversed ranges and offsets that overflow never reach the layer.
  CoreBuilder o;
  o.files = {{0x20000, 0x10000, 0, kLib}, {0x10000, 0x20000, UINT64_MAX / 4096 + 1, kLib},
             {0x10000, 0x20000, UINT64_MAX / 4096, kLib}};
  o.loads = b.loads;
  auto oc = core(o);
  EXPECT_TRUE(oc->info().files.empty());
  ASSERT_FALSE(oc->info().warnings.empty());
  EXPECT_NE(oc->info().warnings[0].find("3 entries"), std::string::npos) << oc->info().warnings[0];
  EXPECT_EQ(missing_file_data(ElfCoreLayer::process_image(oc)).bytes, 0u);

  // An impossible count: the note is refused, not allocated for.
  CoreBuilder n;
  std::string raw(16 + 24, '\0');
  const uint64_t count = uint64_t(1) << 40, page = 4096;
  std::memcpy(&raw[0], &count, 8);
  std::memcpy(&raw[8], &page, 8);
  n.raw_nt_file = raw;
  n.loads = b.loads;
  auto nc = core(n);
  EXPECT_TRUE(nc->info().files.empty());
  ASSERT_FALSE(nc->info().warnings.empty());
  EXPECT_NE(nc->info().warnings[0].find("impossible count"), std::string::npos);
}

TEST_F(Sysroot, BoundsTheFilesItOpens) {
  CoreBuilder b;
  for (uint64_t i = 0; i < 5000; ++i)
    b.files.push_back({0x10000 + i * 0x1000, 0x11000 + i * 0x1000, 0, "/f/" + std::to_string(i)});
  b.loads = {{0x1000000, testing::pattern(0x100, 1), 0, PF_R | PF_W}};
  auto s = sysroot(core(b));
  EXPECT_EQ(s->files().size(), 4096u);
  ASSERT_FALSE(s->warnings().empty());
  EXPECT_NE(s->warnings().back().find("more than 4096"), std::string::npos);
}

}  // namespace
}  // namespace mlfx::layers
