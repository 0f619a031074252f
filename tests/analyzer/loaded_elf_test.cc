// LoadedElf: dynamic symbol lookups through SysV and GNU hash tables, and what hostile tables
// (loops, indices past the table, chains without a terminator) cost: a few reads, not a
// million per lookup.
#include "frontends/elf/loaded_elf.h"

#include <elf.h>

#include <gtest/gtest.h>

#include "layers/segmented_layer.h"
#include "synthetic_image.h"

namespace mlfx::frontends {
namespace {

constexpr uint64_t kBase = 0x7f0000400000;

uint32_t gnu_hash(const std::string& s) {
  uint32_t h = 5381;
  for (unsigned char c : s) h = h * 33 + c;
  return h;
}

struct ElfImage {
  fuzz::Blob b{kBase};
  uint64_t hash = 0;    // the hash table
  uint64_t chains = 0;  // its chain array (SysV: indexed by symbol; GNU: from symoffset 1)
  std::vector<uint64_t> values;  // run-time address of symbol i + 1
};

// An ELF object at kBase defining `names` as dynamic symbols 1..n, all in one chain of a SysV
// (one bucket) or GNU (one bucket, symoffset 1) hash table, which comes last: `spare` words
// follow its chain array, room for hostile chains.
ElfImage make_elf(bool gnu, const std::vector<std::string>& names, size_t spare = 0) {
  ElfImage img;
  fuzz::Blob& b = img.b;
  const size_t n = names.size();
  const uint64_t eh = b.alloc(sizeof(Elf64_Ehdr)), ph = b.alloc(2 * sizeof(Elf64_Phdr));
  const uint64_t dyn = b.alloc(6 * sizeof(Elf64_Dyn)), symtab = b.alloc((n + 1) * sizeof(Elf64_Sym));
  std::string strtab(1, '\0');
  for (size_t i = 0; i < n; ++i) {
    Elf64_Sym s{};
    s.st_name = uint32_t(strtab.size());
    s.st_info = ELF64_ST_INFO(STB_GLOBAL, STT_OBJECT);
    s.st_shndx = 20;
    const uint64_t v = b.alloc(8);
    img.values.push_back(v);
    s.st_value = v - kBase;
    std::memcpy(b.at(symtab + sizeof s * (i + 1)), &s, sizeof s);
    strtab += names[i];
    strtab += '\0';
  }
  const uint64_t strs = b.alloc(strtab.size(), 1);
  std::memcpy(b.at(strs), strtab.data(), strtab.size());
  if (gnu) {
    img.hash = b.alloc(16 + 8 + 4 + 4 * n + 4 * spare);
    b.put32(img.hash, 1), b.put32(img.hash + 4, 1), b.put32(img.hash + 8, 1), b.put32(img.hash + 12, 6);
    b.put64(img.hash + 16, ~uint64_t(0));
    b.put32(img.hash + 24, n ? 1 : 0);
    img.chains = img.hash + 28;
    for (size_t i = 0; i < n; ++i) b.put32(img.chains + 4 * i, (gnu_hash(names[i]) & ~1u) | (i + 1 == n ? 1u : 0u));
  } else {
    img.hash = b.alloc(8 + 4 + 4 * (n + 1) + 4 * spare);
    b.put32(img.hash, 1), b.put32(img.hash + 4, uint32_t(n + 1)), b.put32(img.hash + 8, n ? 1 : 0);
    img.chains = img.hash + 12;
    for (size_t i = 1; i <= n; ++i) b.put32(img.chains + 4 * i, i < n ? uint32_t(i + 1) : 0);
  }
  const std::pair<int64_t, uint64_t> dyns[] = {{DT_SYMTAB, symtab - kBase},
                                               {DT_STRTAB, strs - kBase},
                                               {DT_STRSZ, strtab.size()},
                                               {gnu ? DT_GNU_HASH : DT_HASH, img.hash - kBase},
                                               {DT_NULL, 0}};
  for (size_t i = 0; i < std::size(dyns); ++i) {
    Elf64_Dyn d{};
    d.d_tag = dyns[i].first;
    d.d_un.d_val = dyns[i].second;
    std::memcpy(b.at(dyn + sizeof d * i), &d, sizeof d);
  }
  b.bytes.resize((b.bytes.size() + 15) / 16 * 16);
  Elf64_Ehdr e{};
  std::memcpy(e.e_ident, ELFMAG, SELFMAG);
  e.e_ident[EI_CLASS] = ELFCLASS64, e.e_ident[EI_DATA] = ELFDATA2LSB, e.e_ident[EI_VERSION] = EV_CURRENT;
  e.e_type = ET_DYN, e.e_machine = EM_X86_64, e.e_version = EV_CURRENT;
  e.e_phoff = ph - kBase, e.e_phentsize = sizeof(Elf64_Phdr), e.e_phnum = 2, e.e_ehsize = sizeof e;
  std::memcpy(b.at(eh), &e, sizeof e);
  Elf64_Phdr p[2]{};
  p[0].p_type = PT_LOAD, p[0].p_flags = PF_R, p[0].p_align = 0x1000;
  p[0].p_filesz = p[0].p_memsz = b.bytes.size();
  p[1].p_type = PT_DYNAMIC, p[1].p_flags = PF_R, p[1].p_vaddr = dyn - kBase;
  p[1].p_filesz = p[1].p_memsz = 6 * sizeof(Elf64_Dyn);
  std::memcpy(b.at(ph), p, sizeof p);
  return img;
}

// Counts what a lookup costs: every view() and mapped_run() of the layer below.
class CountingLayer : public layers::Layer {
 public:
  explicit CountingLayer(std::shared_ptr<const layers::Layer> inner) : inner_(std::move(inner)) {}
  const std::string& name() const override { return inner_->name(); }
  const uint8_t* view(uint64_t addr, uint64_t len) const override {
    ++calls;
    return inner_->view(addr, len);
  }
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override {
    ++calls;
    return inner_->mapped_run(addr, max);
  }
  mutable uint64_t calls = 0;

 private:
  std::shared_ptr<const layers::Layer> inner_;
};

std::unique_ptr<CountingLayer> memory(const ElfImage& img) {
  auto blob = std::make_shared<fuzz::MemoryLayer>(img.b.bytes);
  auto seg = layers::SegmentedLayer::create("image", blob, {{kBase, img.b.bytes.size(), 0}});
  EXPECT_TRUE(seg);
  return std::make_unique<CountingLayer>(std::shared_ptr<const layers::Layer>(std::move(*seg)));
}

std::vector<std::string> names(size_t n) {
  std::vector<std::string> v;
  for (size_t i = 0; i < n; ++i) v.push_back("sym" + std::to_string(i));
  return v;
}

std::string error_of(const Result<std::optional<uint64_t>>& r) { return r ? "" : r.error().to_string(); }

TEST(LoadedElf, FindsSymbolsThroughBothHashTables) {
  for (bool gnu : {false, true}) {
    const std::vector<std::string> syms = names(40);
    ElfImage img = make_elf(gnu, syms);
    auto mem = memory(img);
    auto elf = LoadedElf::at(*mem, kBase, "/lib/test.so");
    ASSERT_TRUE(elf) << elf.error().to_string();
    for (size_t i = 0; i < syms.size(); ++i) {
      auto v = elf->symbol(syms[i]);
      ASSERT_TRUE(v) << v.error().to_string();
      ASSERT_TRUE(*v) << syms[i];
      EXPECT_EQ(**v, img.values[i]);
    }
    auto none = elf->symbol("absent");
    ASSERT_TRUE(none) << none.error().to_string();
    EXPECT_FALSE(*none);
  }
}

TEST(LoadedElf, SysvSelfLoopStopsAtTheFirstRepeat) {
  ElfImage img = make_elf(false, names(3), 1 << 20);
  img.b.put32(img.hash + 4, (1u << 20) + 4);  // nchain: the whole (readable) spare area
  img.b.put32(img.chains + 4, 1);             // chain[1] = 1
  auto mem = memory(img);
  auto elf = LoadedElf::at(*mem, kBase, "/lib/loop.so");
  ASSERT_TRUE(elf);
  auto found = elf->symbol("sym0");  // first in the chain: found before the loop
  ASSERT_TRUE(found && *found);
  mem->calls = 0;
  auto r = elf->symbol("absent");
  EXPECT_NE(error_of(r).find("loops at symbol 1"), std::string::npos) << error_of(r);
  EXPECT_LT(mem->calls, 100u);
}

TEST(LoadedElf, SysvLongLoopIsCaughtByTheBitmap) {
  ElfImage img = make_elf(false, names(100));
  img.b.put32(img.chains + 4 * 100, 40);  // ... -> 99 -> 100 -> 40 -> 41 -> ...
  auto mem = memory(img);
  auto elf = LoadedElf::at(*mem, kBase, "/lib/loop.so");
  ASSERT_TRUE(elf);
  mem->calls = 0;
  auto r = elf->symbol("absent");
  EXPECT_NE(error_of(r).find("loops at symbol 40"), std::string::npos) << error_of(r);
  EXPECT_LT(mem->calls, 101u * 12);
}

TEST(LoadedElf, SysvIndexPastTheTable) {
  ElfImage img = make_elf(false, names(3), 1024);
  img.b.put32(img.chains + 4 * 2, 4 + 7);  // nchain is 4
  auto mem = memory(img);
  auto elf = LoadedElf::at(*mem, kBase, "/lib/bad.so");
  ASSERT_TRUE(elf);
  auto r = elf->symbol("absent");
  EXPECT_NE(error_of(r).find("reaches symbol 11, past the table's 4"), std::string::npos) << error_of(r);

  // A huge nchain counts only as far as the chain array and symbol table can be read.
  img.b.put32(img.hash + 4, 0xffffffff);
  img.b.put32(img.chains + 4 * 2, 0x7fffffff);
  auto mem2 = memory(img);
  auto elf2 = LoadedElf::at(*mem2, kBase, "/lib/bad.so");
  ASSERT_TRUE(elf2);
  mem2->calls = 0;
  r = elf2->symbol("absent");
  EXPECT_NE(error_of(r).find("reaches symbol 2147483647, past the table's"), std::string::npos) << error_of(r);
  EXPECT_LT(mem2->calls, 100u);
}

TEST(LoadedElf, GnuChainWithoutTerminatorEndsAtTheTable) {
  const size_t spare = 1 << 20;
  ElfImage img = make_elf(true, names(3), spare);
  img.b.put32(img.chains + 8, gnu_hash("sym2") & ~1u);  // no terminator on the last symbol
  for (size_t i = 0; i < spare; ++i) img.b.put32(img.chains + 12 + 4 * i, 2);
  auto mem = memory(img);
  auto elf = LoadedElf::at(*mem, kBase, "/lib/long.so");
  ASSERT_TRUE(elf);
  EXPECT_LT(mem->calls, 5000u);  // counting the symbols: whole runs at a time
  auto found = elf->symbol("sym2");
  ASSERT_TRUE(found && *found);
  mem->calls = 0;
  auto r = elf->symbol("absent");
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_FALSE(*r);
  EXPECT_LT(mem->calls, 20000u);  // a million chain words, read 256 at a time
}

TEST(LoadedElf, GnuBucketPastTheTable) {
  ElfImage img = make_elf(true, names(3), 16);
  img.b.put32(img.hash + 24, 0x7fffffff);
  auto mem = memory(img);
  auto elf = LoadedElf::at(*mem, kBase, "/lib/bad.so");
  ASSERT_TRUE(elf);
  mem->calls = 0;
  auto r = elf->symbol("absent");
  EXPECT_NE(error_of(r).find("GNU hash bucket points at symbol 2147483647, past the table's"), std::string::npos)
      << error_of(r);
  EXPECT_LT(mem->calls, 20u);
}

}  // namespace
}  // namespace mlfx::frontends
