// The CUPTI library's copy-out without a GPU: a table of several live ranges written as a CUDA
// GPU core dump through a fake device reader, read back by a tiny independent ELF reader
// (section headers: type, sh_addr, sh_offset, sh_size) and checked byte for byte; a range whose
// read fails is zeros from the failing chunk on and reported; a refusing output is reported.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "cupti/copy_out.h"
#include "cupti/recorder.h"
#include "test_util.h"

namespace mlfx::cupti {
namespace {

constexpr uint32_t kManagedType = 0x80000001, kGlobalType = 0x80000002, kDevTableType = 0x80000009,
                   kCtxTableType = 0x8000000a, kMetaType = 0x80000016;

// Device memory in host vectors, read in small chunks; one address can be made to fail.
class FakeReader final : public DeviceReader {
 public:
  std::map<uint64_t, std::string> memory;  // range start -> its bytes
  uint64_t fail_at = 0;                    // a read covering this address fails
  std::vector<uint64_t> contexts_seen;
  size_t chunk_size() const override { return 1000; }
  const uint8_t* read(uint64_t context, uint64_t address, size_t len, std::string* error) override {
    contexts_seen.push_back(context);
    if (fail_at && address <= fail_at && fail_at < address + len) {
      *error = "cuMemcpyDtoH: CUDA_ERROR_ILLEGAL_ADDRESS";
      return nullptr;
    }
    auto it = memory.upper_bound(address);
    if (it == memory.begin()) return nullptr;
    --it;
    const uint64_t off = address - it->first;
    if (off + len > it->second.size()) {
      *error = "outside the fake memory";
      return nullptr;
    }
    buffer_.assign(it->second.data() + off, len);
    return reinterpret_cast<const uint8_t*>(buffer_.data());
  }

 private:
  std::string buffer_;
};

struct SectionView {
  std::string name;
  uint32_t type = 0;
  uint64_t addr = 0, offset = 0, size = 0;
};

template <typename T>
T at(const std::string& f, uint64_t off) {
  T v{};
  if (off + sizeof(T) <= f.size()) std::memcpy(&v, f.data() + off, sizeof(T));
  return v;
}

// The ELF64 section headers, from the specification's offsets (not <elf.h>, not the writer).
std::vector<SectionView> sections(const std::string& f) {
  std::vector<SectionView> out;
  EXPECT_EQ(f.substr(0, 4),
            "\x7f"
            "ELF");
  EXPECT_EQ(f[4], 2);                           // ELFCLASS64
  EXPECT_EQ(f[5], 1);                           // little-endian
  EXPECT_EQ(static_cast<uint8_t>(f[7]), 0x33);  // ELFOSABI_CUDA
  EXPECT_EQ(at<uint16_t>(f, 16), 4);            // ET_CORE
  EXPECT_EQ(at<uint16_t>(f, 18), 0xbe);         // EM_CUDA
  const uint64_t shoff = at<uint64_t>(f, 0x28);
  EXPECT_EQ(at<uint16_t>(f, 0x3a), 64);
  uint64_t shnum = at<uint16_t>(f, 0x3c);
  uint64_t shstrndx = at<uint16_t>(f, 0x3e);
  if (shnum == 0) shnum = at<uint64_t>(f, shoff + 32);
  if (shstrndx == 0xffff) shstrndx = at<uint32_t>(f, shoff + 40);
  EXPECT_LE(shoff + shnum * 64, f.size());
  const uint64_t names = at<uint64_t>(f, shoff + shstrndx * 64 + 24);
  for (uint64_t i = 0; i < shnum; ++i) {
    const uint64_t h = shoff + i * 64;
    SectionView s;
    s.name = std::string(f.c_str() + names + at<uint32_t>(f, h));
    s.type = at<uint32_t>(f, h + 4);
    s.addr = at<uint64_t>(f, h + 16);
    s.offset = at<uint64_t>(f, h + 24);
    s.size = at<uint64_t>(f, h + 32);
    EXPECT_LE(s.offset + (s.type == 8 ? 0 : s.size), f.size()) << s.name;  // SHT_NOBITS has none
    out.push_back(s);
  }
  return out;
}

const SectionView* memory_at(const std::vector<SectionView>& all, uint64_t addr) {
  for (const auto& s : all)
    if ((s.type == kGlobalType || s.type == kManagedType) && s.addr == addr) return &s;
  return nullptr;
}

struct Scenario {
  testing::TempDir dir;
  std::unique_ptr<Recorder> recorder;
  FakeReader reader;
  DumpTables tables;

  Scenario() {
    RecorderConfig config;
    config.log_path = dir / "events.jsonl";
    recorder = std::make_unique<Recorder>(config);
    recorder->context_created(0xc0, 0);
    // Several kinds, sizes that are and are not multiples of the 1000-byte chunk.
    add(RangeKind::kDevice, 0x7f0000000000, 4096, 1);
    add(RangeKind::kManaged, 0x7f0000100000, 1000, 2);
    add(RangeKind::kAsync, 0x7f0000200000, 3500, 3);
    recorder->create(0x77, 2500, 0);
    recorder->map(0x7f0000300000, 2500, 0, 0x77, 0xc0, 0);
    reader.memory[0x7f0000300000] = testing::random_string(2500, 4);
    add(RangeKind::kDevice, 0x7f0000400000, 1, 5);  // a single byte
    // Freed before the trigger: not in the dump.
    recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x7f0000500000, 64, 0xc0, 0, 0);
    recorder->free("cuMemFree_v2", 0x7f0000500000, 0xc0, 0);

    cudacore::DeviceInfo dev;
    dev.name = "Fake GPU";
    dev.sm_type = "sm_90";
    tables.devices.push_back(dev);
    cudacore::ContextInfo ctx;
    ctx.context_id = 0xc0;
    tables.contexts.push_back(ctx);
    tables.meta.generator = std::string("mlfx-cupti ") + kVersion;
  }
  void add(RangeKind kind, uint64_t addr, uint64_t size, uint64_t seed) {
    recorder->alloc("api", kind, addr, size, 0xc0, 0, 0);
    reader.memory[addr] = testing::random_string(size, seed);
  }
  CopyOutReport dump(std::string* out) {
    return write_dump(recorder->table().ranges(), tables, reader, [out](const void* d, size_t n) {
      out->append(static_cast<const char*>(d), n);
      return true;
    });
  }
};

TEST(CuptiCopyOut, EveryLiveRangeAtItsAddress) {
  Scenario s;
  std::string file;
  const CopyOutReport report = s.dump(&file);
  ASSERT_TRUE(report.written) << report.error;
  EXPECT_EQ(report.ranges, 5u);
  EXPECT_EQ(report.bytes, 4096u + 1000 + 3500 + 2500 + 1);
  EXPECT_EQ(report.dump_bytes, file.size());
  EXPECT_EQ(report.failed_ranges, 0u);

  const auto all = sections(file);
  size_t memory_sections = 0;
  for (const auto& sec : all)
    memory_sections += sec.type == kGlobalType || sec.type == kManagedType;
  EXPECT_EQ(memory_sections, 5u);  // the freed range is not there
  for (const auto& [addr, bytes] : s.reader.memory) {
    if (addr == 0x7f0000500000) continue;
    const SectionView* sec = memory_at(all, addr);
    ASSERT_NE(sec, nullptr) << std::hex << addr;
    EXPECT_EQ(sec->size, bytes.size());
    EXPECT_EQ(file.substr(sec->offset, sec->size), bytes) << std::hex << addr;
    EXPECT_EQ(sec->name.rfind(".cudbg.global.", 0), 0u) << sec->name;
    EXPECT_EQ(sec->type, addr == 0x7f0000100000 ? kManagedType : kGlobalType) << sec->name;
  }
  bool dev_table = false, ctx_table = false, meta = false;
  for (const auto& sec : all) {
    dev_table |= sec.type == kDevTableType;
    ctx_table |= sec.type == kCtxTableType;
    meta |= sec.type == kMetaType;
  }
  EXPECT_TRUE(dev_table && ctx_table && meta);
  EXPECT_NE(file.find("mlfx-cupti 0.1.0"), std::string::npos);  // the generator, in .strtab
  EXPECT_NE(file.find("Fake GPU"), std::string::npos);
  for (uint64_t ctx : s.reader.contexts_seen) EXPECT_EQ(ctx, 0xc0u);  // read in the range's context
}

TEST(CuptiCopyOut, FailedRangeIsZerosAndReported) {
  Scenario s;
  s.reader.fail_at = 0x7f0000200000 + 2100;  // the async range's third chunk
  std::string file;
  const CopyOutReport report = s.dump(&file);
  ASSERT_TRUE(report.written) << report.error;  // the dump stays well-formed
  ASSERT_EQ(report.failed_ranges, 1u);
  ASSERT_EQ(report.failures.size(), 1u);
  EXPECT_EQ(report.failures[0].address, 0x7f0000200000u);
  EXPECT_EQ(report.failures[0].size, 3500u);
  EXPECT_EQ(report.failures[0].offset, 2000u);
  EXPECT_NE(report.failures[0].error.find("CUDA_ERROR_ILLEGAL_ADDRESS"), std::string::npos);

  const auto all = sections(file);
  const SectionView* sec = memory_at(all, 0x7f0000200000);
  ASSERT_NE(sec, nullptr);
  const std::string& truth = s.reader.memory[0x7f0000200000];
  EXPECT_EQ(file.substr(sec->offset, 2000), truth.substr(0, 2000));
  EXPECT_EQ(file.substr(sec->offset + 2000, 1500), std::string(1500, '\0'));
  const SectionView* next = memory_at(all, 0x7f0000300000);  // later ranges still copied
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(file.substr(next->offset, next->size), s.reader.memory[0x7f0000300000]);

  // The copy-out event lists the failure.
  s.recorder->copy_out("out.nvcudmp", report);
  const std::string log = testing::read_file(s.dir / "events.jsonl");
  EXPECT_NE(log.find("\"event\":\"copy-out\""), std::string::npos);
  EXPECT_NE(log.find("\"failed_ranges\":1"), std::string::npos);
  EXPECT_NE(log.find("\"offset\":2000"), std::string::npos);
}

TEST(CuptiCopyOut, RefusingOutputIsReported) {
  Scenario s;
  size_t taken = 0;
  const CopyOutReport report =
      write_dump(s.recorder->table().ranges(), s.tables, s.reader, [&taken](const void*, size_t n) {
        taken += n;
        return taken < 5000;  // the reader went away
      });
  EXPECT_FALSE(report.written);
  EXPECT_FALSE(report.error.empty());
}

TEST(CuptiCopyOut, EmptyTableIsAWellFormedDump) {
  testing::TempDir dir;
  FakeReader reader;
  DumpTables tables;
  std::string file;
  const CopyOutReport report = write_dump({}, tables, reader, [&file](const void* d, size_t n) {
    file.append(static_cast<const char*>(d), n);
    return true;
  });
  ASSERT_TRUE(report.written) << report.error;
  EXPECT_EQ(report.ranges, 0u);
  for (const auto& sec : sections(file)) EXPECT_NE(sec.type, kGlobalType);
}

}  // namespace
}  // namespace mlfx::cupti
