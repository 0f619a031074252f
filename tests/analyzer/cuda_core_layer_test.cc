// CudaCoreLayer over GPU core dumps built per NVIDIA's public cudacoredump.h (synthetic_cuda_core.h):
// the table row sizes of several driver revisions, extended section numbering, gzip, and
// malformed dumps (offsets past the end, overlapping memory, huge sizes, a foreign ELF), each
// refused with a message that says what is wrong.
#include "layers/cuda_core_layer.h"

#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>

#include "layers/file_layer.h"
#include "synthetic_cuda_core.h"
#include "test_util.h"

namespace mlfx::layers {
namespace {

using synthetic::CudaDumpSpec;
using synthetic::cuda_dump;
using synthetic::pattern;

constexpr uint64_t kMaxInflated = 256u << 20;

class CudaCore : public ::testing::Test {
 protected:
  Result<std::unique_ptr<CudaCoreLayer>> open(const std::string& dump, uint64_t max_inflated = kMaxInflated) {
    const std::string path = dir / ("dump" + std::to_string(n_++));
    testing::write_file(path, dump);
    auto f = FileLayer::open(path);
    if (!f) return fail(std::move(f).error());
    return CudaCoreLayer::open(std::shared_ptr<const Layer>(std::move(*f)), max_inflated);
  }
  std::string refusal(const std::string& dump, uint64_t max_inflated = kMaxInflated) {
    auto l = open(dump, max_inflated);
    return l ? std::string() : l.error().to_string();
  }
  // Every memory section of `spec` reads back at its device address, and only there.
  void expect_memory(const CudaCoreLayer& layer, const CudaDumpSpec& spec) {
    for (const auto& m : spec.memory) {
      std::vector<uint8_t> got(m.bytes.size());
      ASSERT_TRUE(layer.read(m.addr, got.data(), got.size())) << std::hex << m.addr;
      EXPECT_EQ(got, m.bytes) << std::hex << m.addr;
      EXPECT_EQ(layer.mapped_run(m.addr, UINT64_MAX), m.bytes.size());
      EXPECT_FALSE(layer.is_mapped(m.addr + m.bytes.size(), 1));
      EXPECT_FALSE(layer.is_mapped(m.addr - 1, 1));
    }
  }
  // The section headers of a dump, to forge one.
  static Elf64_Shdr* headers(std::string& dump) {
    Elf64_Ehdr eh;
    std::memcpy(&eh, dump.data(), sizeof eh);
    return reinterpret_cast<Elf64_Shdr*>(dump.data() + eh.e_shoff);
  }
  static Elf64_Shdr* section(std::string& dump, uint32_t type, int nth = 0) {
    Elf64_Ehdr eh;
    std::memcpy(&eh, dump.data(), sizeof eh);
    Elf64_Shdr* h = headers(dump);
    uint64_t count = eh.e_shnum ? eh.e_shnum : h[0].sh_size;
    for (uint64_t i = 1; i < count; ++i)
      if (h[i].sh_type == type && nth-- == 0) return &h[i];
    return nullptr;
  }
  testing::TempDir dir;
  int n_ = 0;
};

constexpr uint32_t kGlobal = uint32_t(cudacore::SectionType::kGlobalMem);

TEST_F(CudaCore, ReadsMemoryDevicesContextsAndMetadata) {
  CudaDumpSpec spec;
  auto layer = open(cuda_dump(spec));
  ASSERT_TRUE(layer) << layer.error().to_string();
  const CudaCoreInfo& info = (*layer)->info();
  expect_memory(**layer, spec);
  EXPECT_EQ((*layer)->segments().size(), 3u);
  EXPECT_EQ(info.global_sections, 2u);
  EXPECT_EQ(info.global_bytes, 4096u + 1000u);
  EXPECT_EQ(info.managed_sections, 1u);
  EXPECT_EQ(info.managed_bytes, 512u);
  ASSERT_EQ(info.devices.size(), 1u);
  EXPECT_EQ(info.devices[0].name, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(info.devices[0].type, "GH100");
  EXPECT_EQ(info.devices[0].sm_type, "sm_90");
  EXPECT_EQ(info.devices[0].pci_bus_id, 0x19u);
  EXPECT_EQ(info.devices[0].num_sms, 132u);
  EXPECT_EQ(info.devices[0].sm_major, 9u);
  EXPECT_EQ(info.device_row_size, 88u);
  ASSERT_EQ(info.contexts.size(), 1u);
  EXPECT_EQ(info.contexts[0].id, 0x5555deadbeefu);
  EXPECT_EQ(info.contexts[0].tid, 4242u);
  ASSERT_TRUE(info.meta);
  EXPECT_EQ(info.meta->generator, "synthetic driver 580.65.06");
  EXPECT_EQ(info.meta->driver_major, 580u);
  EXPECT_EQ(info.meta->cuda_major, 13u);
  EXPECT_FALSE(info.global_memory_skipped());
  EXPECT_FALSE(info.extended_numbering);
  EXPECT_FALSE(info.gzip);
  EXPECT_TRUE(info.warnings.empty()) << info.warnings.front();
  // An address in no section is refused, naming it.
  uint8_t b;
  auto r = (*layer)->read(0x7f0000001000, &b, 1);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kInvalidAddress);
  // A read running off a section's end fails; within one it is zero-copy.
  uint8_t two[2];
  EXPECT_FALSE((*layer)->read(0x7f0000000fff, two, 2));
  EXPECT_NE((*layer)->view(0x7f0000000000, 4096), nullptr);
}

// Each driver revision's device rows (72, 80, 88 bytes) and a future, longer one; drivers before
// r565 wrote no metadata.
TEST_F(CudaCore, RowSizesOfEveryDriverRevision) {
  for (uint32_t row : {72u, 80u, 88u, 104u}) {
    CudaDumpSpec spec;
    spec.device_row = row;
    spec.meta = row >= 88;
    auto layer = open(cuda_dump(spec));
    ASSERT_TRUE(layer) << row << ": " << layer.error().to_string();
    ASSERT_EQ((*layer)->info().devices.size(), 1u) << row;
    EXPECT_EQ((*layer)->info().devices[0].name, "NVIDIA H100 80GB HBM3") << row;
    EXPECT_EQ((*layer)->info().devices[0].sm_minor, 0u) << row;
    EXPECT_EQ((*layer)->info().devices[0].num_sms, 132u) << row;
    EXPECT_EQ((*layer)->info().device_row_size, row);
    EXPECT_EQ((*layer)->info().meta.has_value(), row >= 88);
    expect_memory(**layer, spec);
  }
  // A row shorter than a field reads that field as zero, as readers must.
  CudaDumpSpec spec;
  spec.device_row = 56;  // ends before sm_major (56) and sm_minor (60)
  auto layer = open(cuda_dump(spec));
  ASSERT_TRUE(layer) << layer.error().to_string();
  EXPECT_EQ((*layer)->info().devices[0].sm_major, 0u);
  EXPECT_EQ((*layer)->info().devices[0].num_sms, 132u);
}

TEST_F(CudaCore, ExtendedSectionNumbering) {
  CudaDumpSpec spec;
  spec.extended = true;
  auto layer = open(cuda_dump(spec));
  ASSERT_TRUE(layer) << layer.error().to_string();
  EXPECT_TRUE((*layer)->info().extended_numbering);
  EXPECT_EQ((*layer)->info().devices.size(), 1u);
  expect_memory(**layer, spec);
  // Past 0xff00 sections the numbering must be extended (a dump has registers for every lane).
  spec.extended = false;
  spec.filler_sections = 0xff10;
  spec.memory.push_back({0x7f8000000000, pattern(300, 9)});  // after the fillers' indexes
  std::string dump = cuda_dump(spec);
  Elf64_Ehdr eh;
  std::memcpy(&eh, dump.data(), sizeof eh);
  EXPECT_EQ(eh.e_shnum, 0);
  EXPECT_EQ(eh.e_shstrndx, SHN_XINDEX);
  layer = open(dump);
  ASSERT_TRUE(layer) << layer.error().to_string();
  EXPECT_GT((*layer)->info().sections, 0xff10u);
  EXPECT_EQ((*layer)->info().devices[0].name, "NVIDIA H100 80GB HBM3");
  expect_memory(**layer, spec);
}

TEST_F(CudaCore, OtherAbiVersionsAndTheSkipGlobalMemoryFlag) {
  CudaDumpSpec spec;
  spec.abi_version = 5;
  auto layer = open(cuda_dump(spec));
  ASSERT_TRUE(layer) << layer.error().to_string();
  EXPECT_EQ((*layer)->info().abi_version, 5);
  spec = {};
  spec.flags = cudacore::kFlagSkipGlobalMemory;
  spec.memory.clear();
  layer = open(cuda_dump(spec));
  ASSERT_TRUE(layer) << layer.error().to_string();
  EXPECT_TRUE((*layer)->info().global_memory_skipped());
  ASSERT_EQ((*layer)->info().warnings.size(), 1u);
  EXPECT_NE((*layer)->info().warnings[0].find("skip_global_memory"), std::string::npos);
}

TEST_F(CudaCore, GzipCompressedDumps) {
  CudaDumpSpec spec;
  spec.memory.push_back({0x7f1000000000, pattern(3u << 20, 7)});  // more than one output buffer
  const std::string dump = cuda_dump(spec);
  for (size_t members : {1u, 3u}) {
    auto layer = open(synthetic::gzip(dump, members));
    ASSERT_TRUE(layer) << members << ": " << layer.error().to_string();
    EXPECT_TRUE((*layer)->info().gzip);
    expect_memory(**layer, spec);
  }
  // Damaged, truncated, followed by junk, or inflating past the limit: refused, saying so.
  std::string gz = synthetic::gzip(dump);
  EXPECT_NE(refusal(gz.substr(0, gz.size() / 2)).find("truncated"), std::string::npos);
  std::string flipped = gz;
  flipped[gz.size() / 2] ^= 0x55;
  flipped[gz.size() / 2 + 1] ^= 0x55;
  EXPECT_NE(refusal(flipped).find("damaged"), std::string::npos) << refusal(flipped);
  EXPECT_NE(refusal(gz + "junk").find("not another gzip member"), std::string::npos);
  EXPECT_NE(refusal(gz, 1u << 20).find("the limit"), std::string::npos);
}

TEST_F(CudaCore, MalformedDumpsAreRefusedClearly) {
  const std::string good = cuda_dump({});
  auto forged = [&](auto change) {
    std::string d = good;
    change(d);
    return refusal(d);
  };
  auto contains = [](const std::string& text, const char* part) {
    return text.find(part) != std::string::npos ? ::testing::AssertionSuccess()
                                                 : ::testing::AssertionFailure() << "\"" << text << "\" lacks \"" << part << "\"";
  };
  // A memory section whose bytes lie past the end of the file, or whose size is huge.
  EXPECT_TRUE(contains(forged([&](std::string& d) { section(d, kGlobal)->sh_offset = d.size() + 4096; }),
                       "run past the end of the file"));
  EXPECT_TRUE(contains(forged([&](std::string& d) { section(d, kGlobal)->sh_size = uint64_t{1} << 62; }),
                       "run past the end of the file"));
  // Two memory sections that overlap in device memory.
  EXPECT_TRUE(contains(forged([&](std::string& d) { section(d, kGlobal, 1)->sh_addr = 0x7f0000000800; }), "overlap"));
  // A device range that wraps around.
  EXPECT_TRUE(contains(forged([&](std::string& d) { section(d, kGlobal)->sh_addr = UINT64_MAX - 10; }), "wraps around"));
  // Section headers past the end; a count that cannot fit; the wrong header size.
  EXPECT_TRUE(contains(forged([&](std::string& d) { reinterpret_cast<Elf64_Ehdr*>(d.data())->e_shoff = d.size() + 64; }),
                       "beyond the end of the file"));
  EXPECT_TRUE(contains(forged([&](std::string& d) { reinterpret_cast<Elf64_Ehdr*>(d.data())->e_shnum = 0xfff0; }),
                       "do not fit"));
  EXPECT_TRUE(contains(forged([&](std::string& d) {
                         auto* eh = reinterpret_cast<Elf64_Ehdr*>(d.data());
                         headers(d)[0].sh_size = UINT64_MAX / 2;
                         eh->e_shnum = 0;
                       }),
                       "do not fit"));
  EXPECT_TRUE(contains(forged([&](std::string& d) { reinterpret_cast<Elf64_Ehdr*>(d.data())->e_shentsize = 40; }),
                       "section header size"));
  // A table with no row size, or an absurd one.
  EXPECT_TRUE(contains(forged([&](std::string& d) {
                         section(d, uint32_t(cudacore::SectionType::kDeviceTable))->sh_entsize = 0;
                       }),
                       "row size"));
  // Cut short: the section headers (at the end) are gone.
  EXPECT_TRUE(contains(refusal(good.substr(0, good.size() - 100)), "truncated"));
  EXPECT_TRUE(contains(refusal(good.substr(0, 40)), "too short"));
  // An ELF core of another machine: not a CUDA dump.
  EXPECT_TRUE(contains(forged([&](std::string& d) { reinterpret_cast<Elf64_Ehdr*>(d.data())->e_machine = EM_X86_64; }),
                       "not a CUDA core dump"));
  EXPECT_TRUE(contains(refusal("not an elf file at all, but long enough to hold an ELF header........"), "not an ELF"));
  // String indexes out of range are empty names, not reads past the table.
  std::string d = good;
  const uint64_t off = section(d, uint32_t(cudacore::SectionType::kDeviceTable))->sh_offset;
  const uint64_t huge = UINT64_MAX - 3;
  std::memcpy(&d[off], &huge, 8);
  auto layer = open(d);
  ASSERT_TRUE(layer) << layer.error().to_string();
  EXPECT_EQ((*layer)->info().devices[0].name, "");
}

// mlfx's .mlfx.unreadable table (the CUPTI copy-out's zero-filled ranges) cuts those bytes out.
TEST_F(CudaCore, UnreadableRangesAreNotInTheLayer) {
  cudacore::CoreWriter w;
  w.add_memory(0x10000, pattern(0x1000, 4));
  w.add_memory(0x20000, pattern(0x100, 5));
  w.add_unreadable_table(4, [] {
    return cudacore::CoreWriter::Ranges{{0x10100, 0x100}, {0x10f00, 0x200}, {0x1, 0x10}};  // the last two run out
  });
  std::string dump;
  std::string error;
  ASSERT_TRUE(w.write([&dump](const void* p, size_t n) { return dump.append(static_cast<const char*>(p), n), true; }, &error));
  auto layer = open(dump);
  ASSERT_TRUE(layer) << layer.error().to_string();
  const auto& segs = (*layer)->segments();
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_EQ(segs[0].start, 0x10000u);
  EXPECT_EQ(segs[0].size, 0x100u);
  EXPECT_EQ(segs[1].start, 0x10200u);
  EXPECT_EQ(segs[1].size, 0xd00u);
  EXPECT_EQ(segs[2].start, 0x20000u);
  EXPECT_EQ((*layer)->info().unreadable_bytes, 0x200u);
  EXPECT_FALSE((*layer)->is_mapped(0x10100, 1));
  uint8_t b;
  ASSERT_TRUE((*layer)->read(0x10200, &b, 1));
  EXPECT_EQ(b, pattern(0x1000, 4)[0x200]);
  // A table whose rows are not 16 bytes is refused.
  Elf64_Shdr* t = section(dump, cudacore::kUnreadableType);
  ASSERT_NE(t, nullptr);
  t->sh_entsize = 8;
  EXPECT_NE(refusal(dump).find("16 expected"), std::string::npos);
}

TEST_F(CudaCore, ProbeTellsCudaDumpsFromOtherCores) {
  testing::write_file(dir / "cuda", cuda_dump({}));
  testing::write_file(dir / "gz", synthetic::gzip(cuda_dump({})));
  std::string other = cuda_dump({});
  reinterpret_cast<Elf64_Ehdr*>(other.data())->e_machine = EM_X86_64;
  testing::write_file(dir / "x86", other);
  EXPECT_TRUE(CudaCoreLayer::probe(**FileLayer::open(dir / "cuda")));
  EXPECT_TRUE(CudaCoreLayer::probe(**FileLayer::open(dir / "gz")));
  EXPECT_FALSE(CudaCoreLayer::probe(**FileLayer::open(dir / "x86")));
}

}  // namespace
}  // namespace mlfx::layers
