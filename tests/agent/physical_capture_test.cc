// Tests of the whole-memory capture library (agent/capture/physical/): the iomem tree and the RAM
// stock LiME misses in it, LiME stream checking, the LiME image our module's reader writes (with
// a reader standing in for /dev/mlfx_mem, unreadable pages included), module files (the real
// DKMS LiME when installed), and the pagemap of a real python3 process frozen on this host.
// Loading LiME or mlfx_mem.ko needs Debian's kernel: that runs in the VM lab
// (test_physical_capture_vm.py).
#include <signal.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "bundle_fixture.h"
#include "capture/capture.h"
#include "capture/physical/iomem.h"
#include "capture/physical/kernel_facts.h"
#include "capture/physical/kernel_module.h"
#include "capture/physical/khugepaged_pause.h"
#include "capture/physical/kmod_source.h"
#include "capture/physical/lime_format.h"
#include "capture/physical/lime_source.h"
#include "capture/physical/pagemap.h"
#include "capture/physical/target_processes.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx::agent::physical {
namespace {

// ---- /proc/iomem ----

// A machine with hot-plugged virtio-mem RAM and a dax device onlined as System RAM (kmem):
// both nested under non-RAM parents, where LiME 1.9.1 does not look.
constexpr char kIomem[] =
    "00000000-00000fff : Reserved\n"
    "00001000-0009fbff : System RAM\n"
    "0009fc00-000fffff : Reserved\n"
    "  000f0000-000fffff : System ROM\n"
    "00100000-bfffffff : System RAM\n"
    "  01000000-02259aff : Kernel code\n"
    "  02e00000-0307a57f : Kernel data\n"
    "c0000000-febfffff : PCI Bus 0000:00\n"
    "100000000-13fffffff : System RAM\n"
    "140000000-1bfffffff : virtio0\n"
    "  140000000-17fffffff : System RAM (virtio_mem)\n"
    "1c0000000-2bfffffff : Persistent Memory\n"
    "  1c0000000-2bfffffff : namespace0.0\n"
    "    1c0000000-2bfffffff : dax0.0\n"
    "      1c0000000-2bfffffff : System RAM (kmem)\n";

TEST(Iomem, ParsesEveryDepth) {
  auto tree = parse_iomem(kIomem);
  ASSERT_TRUE(tree) << tree.error().to_string();
  ASSERT_EQ(tree->size(), 15u);
  EXPECT_EQ((*tree)[1].start, 0x1000u);
  EXPECT_EQ((*tree)[1].end, 0x9fbffu);
  EXPECT_EQ((*tree)[1].name, "System RAM");
  EXPECT_EQ((*tree)[3].depth, 1u);
  EXPECT_EQ((*tree)[3].name, "System ROM");
  EXPECT_EQ((*tree)[10].name, "System RAM (virtio_mem)");
  EXPECT_EQ((*tree)[14].depth, 3u);
  EXPECT_EQ((*tree)[14].start, 0x1c0000000u);
  EXPECT_EQ(iomem_json(*tree)[14]["depth"], 3);
}

TEST(Iomem, NestedRamIsWhatLimeMisses) {
  auto tree = parse_iomem(kIomem);
  ASSERT_TRUE(tree);
  const auto lime = lime_1_9_1_ranges(*tree);
  EXPECT_EQ(lime, (std::vector<PhysRange>{{0x1000, 0x9fbff}, {0x100000, 0xbfffffff}, {0x100000000, 0x13fffffff}}));
  const auto all = all_system_ram(*tree);
  // Adjacent RAM merges: top-level 4-5 GiB, then virtio_mem 5-6 GiB.
  EXPECT_EQ(all, (std::vector<PhysRange>{{0x1000, 0x9fbff},
                                         {0x100000, 0xbfffffff},
                                         {0x100000000, 0x17fffffff},
                                         {0x1c0000000, 0x2bfffffff}}));
  EXPECT_EQ(subtract(all, lime), (std::vector<PhysRange>{{0x140000000, 0x17fffffff}, {0x1c0000000, 0x2bfffffff}}));
  EXPECT_TRUE(subtract(lime, all).empty());
}

TEST(Iomem, SubtractSplitsAroundHoles) {
  EXPECT_EQ(subtract({{0, 99}}, {{10, 19}, {50, 59}}), (std::vector<PhysRange>{{0, 9}, {20, 49}, {60, 99}}));
  EXPECT_EQ(subtract({{0, 99}}, {{0, 99}}), std::vector<PhysRange>{});
  EXPECT_EQ(subtract({{10, 20}}, {{0, 15}}), (std::vector<PhysRange>{{16, 20}}));
  EXPECT_EQ(subtract({{0, UINT64_MAX}}, {{0, 9}}), (std::vector<PhysRange>{{10, UINT64_MAX}}));
}

TEST(Iomem, RefusesMalformedText) {
  for (const char* bad : {"00000000-00000fff Reserved\n", "zz-00000fff : Reserved\n", "1000-0fff : backwards\n",
                          "00000000-00000fff : A\n    00000000-00000fff : skips a level\n",
                          " 00000000-00000fff : odd indent\n", "", "00000000-00000fff : A\n\n00001000-00001fff : B\n"}) {
    auto r = parse_iomem(bad);
    EXPECT_FALSE(r) << "accepted: " << bad;
    if (!r && *bad) {
      EXPECT_EQ(r.error().code(), Errc::kBadFormat) << r.error().to_string();
    }
  }
}

TEST(Iomem, ZeroAddressesMeanNotRoot) {
  auto r = parse_iomem("00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kPermission);
  EXPECT_NE(r.error().message().find("CAP_SYS_ADMIN"), std::string::npos);
}

TEST(Iomem, ThisHostsTree) {
  if (geteuid() != 0) GTEST_SKIP() << "/proc/iomem shows addresses to root only";
  auto tree = read_iomem();
  ASSERT_TRUE(tree) << tree.error().to_string();
  EXPECT_FALSE(all_system_ram(*tree).empty());
}

// ---- LiME streams ----

std::string lime_image(const std::vector<std::pair<PhysRange, char>>& ranges) {
  std::string out;
  for (const auto& [r, fill] : ranges) {
    uint8_t h[kLimeHeaderSize];
    encode_lime_header(h, r.start, r.end);
    out.append(reinterpret_cast<const char*>(h), sizeof h);
    out.append(r.size(), fill);
  }
  return out;
}

Status feed_in_pieces(LimeStreamChecker& c, const std::string& s, size_t piece) {
  for (size_t i = 0; i < s.size(); i += piece) MLFX_TRY(c.feed(as_bytes(std::string_view(s).substr(i, piece))));
  return c.finish();
}

TEST(LimeStream, HeaderLayoutIsTheDocumentedOne) {
  uint8_t h[kLimeHeaderSize];
  encode_lime_header(h, 0x1000, 0x9fbff);
  const uint8_t want[32] = {0x45, 0x4d, 0x69, 0x4c, 1, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0,
                            0xff, 0xfb, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(std::memcmp(h, want, 32), 0);
}

TEST(LimeStream, AcceptsAValidStreamFedInAnyPieces) {
  const std::string img = lime_image({{{0x1000, 0x2fff}, 'a'}, {{0x3000, 0x3fff}, 'b'}, {{0x100000, 0x100fff}, 'c'}});
  for (size_t piece : {size_t{1}, size_t{7}, size_t{32}, size_t{4096}, img.size()}) {
    LimeStreamChecker c;
    ASSERT_TRUE(feed_in_pieces(c, img, piece)) << piece;
    EXPECT_EQ(c.ranges(), (std::vector<PhysRange>{{0x1000, 0x2fff}, {0x3000, 0x3fff}, {0x100000, 0x100fff}}));
    EXPECT_EQ(c.data_bytes(), 0x4000u);
    EXPECT_EQ(c.stream_bytes(), img.size());
  }
}

std::string stream_error(const std::string& img) {
  LimeStreamChecker c;
  auto st = feed_in_pieces(c, img, 5);
  return st ? "" : st.error().to_string();
}

TEST(LimeStream, RefusesDamagedStreamsSayingWhere) {
  const std::string good = lime_image({{{0x1000, 0x1fff}, 'a'}, {{0x4000, 0x4fff}, 'b'}});
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  EXPECT_NE(stream_error(bad_magic).find("no LiME magic at the start"), std::string::npos);
  std::string bad_second = good;
  bad_second[32 + 0x1000] = 'X';
  EXPECT_NE(stream_error(bad_second).find("damaged stream"), std::string::npos) << stream_error(bad_second);
  EXPECT_NE(stream_error(bad_second).find("0x1020"), std::string::npos) << "offset of the second header";
  std::string bad_version = good;
  bad_version[4] = 2;
  EXPECT_NE(stream_error(bad_version).find("version 2"), std::string::npos);
  std::string reserved = good;
  reserved[30] = 1;
  EXPECT_NE(stream_error(reserved).find("reserved"), std::string::npos);
  EXPECT_NE(stream_error(lime_image({{{0x4000, 0x4fff}, 'a'}, {{0x1000, 0x1fff}, 'b'}})).find("unsorted or overlapping"),
            std::string::npos);
  EXPECT_NE(stream_error(lime_image({{{0x1000, 0x4fff}, 'a'}, {{0x4000, 0x4fff}, 'b'}})).find("unsorted or overlapping"),
            std::string::npos);
  EXPECT_NE(stream_error(good.substr(0, good.size() - 1)).find("truncated"), std::string::npos);
  EXPECT_NE(stream_error(good.substr(0, 32 + 0x1000 + 10)).find("inside a range header"), std::string::npos);
  EXPECT_NE(stream_error("").find("no range"), std::string::npos);
  std::string backwards(32, '\0');
  encode_lime_header(reinterpret_cast<uint8_t*>(backwards.data()), 0x2000, 0x1000);
  EXPECT_NE(stream_error(backwards).find("ends before it starts"), std::string::npos);
}

// ---- the image our module's reader writes (LimeImageWriter) ----

// Stands in for /dev/mlfx_mem: byte b at physical address a is (a * 7 + a / 4096) & 0xff; pages
// in `bad` fail with their errno, as the uapi says: a short count at the first bad page, the
// error when it is the first one asked for.
struct FakeRam {
  std::map<uint64_t, int> bad;  // page address -> errno
  size_t calls = 0;
  static uint8_t byte_at(uint64_t a) { return static_cast<uint8_t>(a * 7 + a / 4096); }
  ssize_t read(uint8_t* buf, size_t n, uint64_t address) {
    ++calls;
    size_t done = 0;
    while (done < n) {
      const uint64_t a = address + done;
      auto it = bad.find(a & ~uint64_t{4095});
      if (it != bad.end()) {
        if (done) return static_cast<ssize_t>(done);
        errno = it->second;
        return -1;
      }
      buf[done++] = byte_at(a);
    }
    return static_cast<ssize_t>(n);
  }
};

class LimeImage : public ::testing::Test {
 protected:
  static constexpr uint32_t kChunk = 64u << 10;
  // Seals the ranges through LimeImageWriter (64 KiB chunks) and reads the image back.
  std::string write(FakeRam& ram, const std::vector<PhysRange>& ranges, LimeImageWriter** out_writer = nullptr) {
    auto out = File::create_new(path_, 0600);
    EXPECT_TRUE(out);
    bundle::SealParams p;
    p.chunk_size = kChunk;
    auto w = bundle::BundleWriter::create(std::move(*out), *keys_.device.signing, {keys_.lab.box->public_key()}, p);
    EXPECT_TRUE(w) << w.error().to_string();
    writer_.emplace(4096, [&ram](uint8_t* b, size_t n, uint64_t a) { return ram.read(b, n, a); }, nullptr);
    EXPECT_TRUE(w->begin_stream("memory", "test"));
    for (const PhysRange& r : ranges) {
      auto st = writer_->read_range(*w, r, nullptr);
      EXPECT_TRUE(st) << st.error().to_string();
    }
    EXPECT_TRUE(w->end_stream());
    EXPECT_TRUE(w->finish());
    if (out_writer) *out_writer = &*writer_;
    auto reader = bundle::BundleReader::open(path_);
    EXPECT_TRUE(reader);
    auto plain = testing::decrypt_all(*reader, *keys_.lab.box);
    EXPECT_TRUE(plain);
    return plain ? (*plain)[0] : "";
  }
  // An independent reader of the image (the format's documentation): ranges and their bytes.
  static std::vector<std::pair<PhysRange, std::string>> parse(const std::string& img) {
    std::vector<std::pair<PhysRange, std::string>> out;
    size_t at = 0;
    while (at < img.size()) {
      EXPECT_LE(at + 32, img.size());
      const auto* h = reinterpret_cast<const uint8_t*>(img.data() + at);
      EXPECT_EQ(load_le<uint32_t>(h), 0x4C694D45u);
      EXPECT_EQ(load_le<uint32_t>(h + 4), 1u);
      const uint64_t s = load_le<uint64_t>(h + 8), e = load_le<uint64_t>(h + 16);
      EXPECT_EQ(load_le<uint64_t>(h + 24), 0u);
      out.push_back({{s, e}, img.substr(at + 32, e - s + 1)});
      at += 32 + (e - s + 1);
    }
    EXPECT_EQ(at, img.size());
    return out;
  }
  testing::TempDir dir_;
  std::string path_ = dir_.path() + "/b.mlfx";
  testing::TestKeys keys_ = testing::make_keys();
  std::optional<LimeImageWriter> writer_;
};

TEST_F(LimeImage, EveryByteOnceInPageAlignedPiecesAcrossChunks) {
  FakeRam ram;
  const std::vector<PhysRange> ranges = {{0x1000, 0x9fbff}, {0x100000, 0x100000 + (3u << 20) - 1}};
  const auto pieces = parse(write(ram, ranges));
  ASSERT_GT(pieces.size(), 2u) << "a range larger than a chunk is split";
  uint64_t prev_end = 0;
  std::vector<PhysRange> covered;
  for (const auto& [r, bytes] : pieces) {
    EXPECT_TRUE(covered.empty() || r.start > prev_end);
    prev_end = r.end;
    // No page of the image is split between two ranges.
    EXPECT_EQ(r.start % 4096, 0u) << hex_address(r.start);
    const bool range_end = r.end == 0x9fbff || r.end == ranges[1].end;
    if (!range_end) {
      EXPECT_EQ((r.end + 1) % 4096, 0u) << hex_address(r.end);
    }
    for (size_t i = 0; i < bytes.size(); i += 997)
      ASSERT_EQ(static_cast<uint8_t>(bytes[i]), FakeRam::byte_at(r.start + i)) << hex_address(r.start + i);
    if (!covered.empty() && covered.back().end + 1 == r.start) covered.back().end = r.end;
    else covered.push_back(r);
  }
  EXPECT_EQ(covered, ranges);
  EXPECT_LT(pieces.size(), 2 * (4u << 20) / kChunk + 8) << "about two headers per chunk at most";
}

TEST_F(LimeImage, AnUnreadablePageSplitsTheRangeAndIsNeverZeros) {
  FakeRam ram;
  ram.bad = {{0x5000, EHWPOISON}, {0x6000, EHWPOISON}, {0x9000, ENXIO}, {0xc000, EAGAIN}};
  LimeImageWriter* w = nullptr;
  const auto pieces = parse(write(ram, {{0x1000, 0xcfff}}, &w));
  std::vector<PhysRange> got;
  for (const auto& [r, bytes] : pieces) {
    if (!got.empty() && got.back().end + 1 == r.start) got.back().end = r.end;
    else got.push_back(r);
    for (size_t i = 0; i < bytes.size(); ++i) ASSERT_EQ(static_cast<uint8_t>(bytes[i]), FakeRam::byte_at(r.start + i));
  }
  EXPECT_EQ(got, (std::vector<PhysRange>{{0x1000, 0x4fff}, {0x7000, 0x8fff}, {0xa000, 0xbfff}}));
  ASSERT_EQ(w->unreadable().size(), 3u);
  EXPECT_EQ(w->unreadable()[0].range, (PhysRange{0x5000, 0x6fff}));  // two pages, one reason: one entry
  EXPECT_NE(w->unreadable()[0].reason.find("EHWPOISON"), std::string::npos);
  EXPECT_EQ(w->unreadable()[1].range, (PhysRange{0x9000, 0x9fff}));
  EXPECT_NE(w->unreadable()[1].reason.find("ENXIO"), std::string::npos);
  EXPECT_EQ(w->unreadable()[2].range, (PhysRange{0xc000, 0xcfff}));
  EXPECT_NE(w->unreadable()[2].reason.find("EAGAIN"), std::string::npos);
  EXPECT_EQ(w->data_bytes(), 0x4000u + 0x2000 + 0x2000);
}

TEST_F(LimeImage, AnUndocumentedErrorFailsTheCapture) {
  FakeRam ram;
  ram.bad = {{0x2000, EFAULT}};
  auto out = File::create_new(path_, 0600);
  ASSERT_TRUE(out);
  auto w = bundle::BundleWriter::create(std::move(*out), *keys_.device.signing, {keys_.lab.box->public_key()}, {});
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->begin_stream("memory", "test"));
  LimeImageWriter image(4096, [&ram](uint8_t* b, size_t n, uint64_t a) { return ram.read(b, n, a); }, nullptr);
  auto st = image.read_range(*w, {0x1000, 0x3fff}, nullptr);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().to_string().find("0x2000"), std::string::npos) << st.error().to_string();
}

TEST(Kmod, RamRangesAndReasons) {
  std::vector<KmodRange> tree = {{{0x0, 0xfff}, 0, 0x2, "Reserved"},
                                 {{0x1000, 0x9fbff}, 0, 0x3, "System RAM"},
                                 {{0x100000, 0xbfffffff}, 0, 0x3, "System RAM"},
                                 {{0x1000000, 0x1ffffff}, 1, 0x2, "Kernel code"},
                                 {{0x140000000, 0x17fffffff}, 1, 0x3, "System RAM (virtio_mem)"}};
  EXPECT_EQ(kmod_ram(tree), (std::vector<PhysRange>{{0x1000, 0x9fbff}, {0x100000, 0xbfffffff}, {0x140000000, 0x17fffffff}}));
  for (int e : {ENXIO, EHWPOISON, EAGAIN, EIO}) EXPECT_FALSE(kmod_page_reason(e).empty()) << e;
  EXPECT_TRUE(kmod_page_reason(EFAULT).empty());
}

// ---- kernel facts, modules ----

TEST(KernelFacts, Kallsyms) {
  EXPECT_FALSE(kallsyms_has_addresses("0000000000000000 A fixed_percpu_data\n0000000000000000 T _stext\n"));
  EXPECT_TRUE(kallsyms_has_addresses("0000000000000000 A fixed_percpu_data\nffffffff81000000 T _stext\n"));
  auto k = read_kernel_facts();
  ASSERT_TRUE(k) << k.error().to_string();
  EXPECT_EQ(k->banner.rfind("Linux version ", 0), 0u) << k->banner;
  EXPECT_EQ(k->page_size, static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
}

std::string installed_lime() {
  for (const auto& e : std::filesystem::directory_iterator("/lib/modules")) {
    const std::string p = e.path().string() + "/updates/dkms/lime.ko";
    if (std::filesystem::exists(p)) return p;
  }
  return "";
}

// ---- khugepaged paused while the image is read ----

TEST(KhugepagedPause, SelectedChoiceOfASysfsList) {
  EXPECT_EQ(selected_choice("always [madvise] never\n"), "madvise");
  EXPECT_EQ(selected_choice("[always] madvise never"), "always");
  EXPECT_EQ(selected_choice("always madvise never"), "");
  EXPECT_EQ(selected_choice("]always [madvise"), "");
}

// On a stand-in for transparent_hugepage/enabled: "never" written, then the old mode back.
TEST(KhugepagedPause, WritesNeverThenThePreviousModeAndRecordsBoth) {
  testing::TempDir dir;
  const std::string setting = dir / "enabled";
  testing::write_file(setting, "always [madvise] never\n");
  {
    KhugepagedPause p(setting);
    p.pause();
    EXPECT_TRUE(p.paused());
    EXPECT_EQ(testing::read_file(setting).substr(0, 5), "never");
    ASSERT_TRUE(p.resume());
    EXPECT_EQ(testing::read_file(setting).substr(0, 7), "madvise");
    const json::Json j = p.to_json();
    EXPECT_EQ(j["was"], "madvise");
    EXPECT_TRUE(j["paused"].get<bool>());
    EXPECT_TRUE(j["restored"].get<bool>());
    EXPECT_TRUE(p.resume());  // idempotent
  }
  // Restoring fails (the setting vanished): an error that says how to restore it, recorded.
  testing::write_file(setting, "[always] madvise never\n");
  KhugepagedPause p(setting);
  p.pause();
  ASSERT_TRUE(p.paused());
  std::filesystem::remove(setting);
  std::filesystem::create_directory(setting);
  auto st = p.resume();
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("echo always > " + setting), std::string::npos) << st.error().to_string();
  EXPECT_TRUE(p.to_json().contains("restore_error"));
  EXPECT_FALSE(p.to_json()["restored"].get<bool>());
}

TEST(KhugepagedPause, NothingToPauseIsSaidNotFailed) {
  testing::TempDir dir;
  KhugepagedPause absent(dir / "absent");
  absent.pause();
  EXPECT_FALSE(absent.paused());
  EXPECT_NE(absent.to_json().value("not_paused", "").find("not available"), std::string::npos) << absent.to_json().dump();
  testing::write_file(dir / "off", "always madvise [never]\n");
  KhugepagedPause off(dir / "off");
  off.pause();
  EXPECT_FALSE(off.paused());
  EXPECT_NE(off.to_json().value("not_paused", "").find("off already"), std::string::npos);
  EXPECT_EQ(testing::read_file(dir / "off"), "always madvise [never]\n");  // untouched
  EXPECT_TRUE(off.resume());
}

TEST(KernelModule, ReadsModinfoOfTheInstalledLime) {
  const std::string lime = installed_lime();
  if (lime.empty()) GTEST_SKIP() << "lime-forensics-dkms is not built for any kernel here";
  const std::string data = testing::read_file(lime);
  auto name = modinfo_field(as_bytes(data), "name");
  ASSERT_TRUE(name) << name.error().to_string();
  EXPECT_EQ(*name, "lime");
  auto parm = modinfo_field(as_bytes(data), "parmtype");
  ASSERT_TRUE(parm);
  auto vermagic = modinfo_field(as_bytes(data), "vermagic");
  ASSERT_TRUE(vermagic);
  const std::string release = vermagic->substr(0, vermagic->find(' '));
  EXPECT_NE(lime.find("/lib/modules/" + release + "/"), std::string::npos);

  utsname u{};
  ASSERT_EQ(uname(&u), 0);
  auto m = open_module_file(lime, "LiME");
  if (release == u.release) {
    ASSERT_TRUE(m) << m.error().to_string();
    EXPECT_EQ(m->name, "lime");
    EXPECT_EQ(m->sha256, crypto::sha256_hex(as_bytes(data)));
  } else {  // built for the lab's kernel, not this one: refused before any load is tried
    ASSERT_FALSE(m);
    EXPECT_NE(m.error().message().find("was built for kernel " + release), std::string::npos) << m.error().to_string();
  }
}

TEST(KernelModule, RefusesWhatIsNotAModule) {
  testing::TempDir dir;
  auto missing = open_module_file(dir.path() + "/nope.ko", "LiME");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Errc::kNotFound);
  EXPECT_NE(missing.error().message().find("--module"), std::string::npos);
  testing::write_file(dir.path() + "/text.ko", "not an ELF file at all, but long enough to look at.......");
  EXPECT_FALSE(open_module_file(dir.path() + "/text.ko", "LiME"));
  testing::write_file(dir.path() + "/x.ko.xz", std::string("\xfd" "7zXZ\0\0", 6) + std::string(100, 'x'));
  auto xz = open_module_file(dir.path() + "/x.ko.xz", "LiME");
  ASSERT_FALSE(xz);
  EXPECT_NE(xz.error().message().find("compressed"), std::string::npos);
}

// ---- the --pid targets: checks, and the pagemap of a real process ----

TEST(Targets, RefusedBeforeAnythingIsLoaded) {
  // A pid that cannot exist (beyond pid_max): refused by create(), which also needs the module.
  PhysicalOptions opt;
  opt.pids = {999999999};
  opt.module_path = "/nonexistent/lime.ko";
  auto s = LimeSource::create(opt);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Errc::kNotFound);
  EXPECT_NE(s.error().message().find("no such process: pid 999999999"), std::string::npos) << s.error().to_string();
  EXPECT_NE(s.error().message().find("Nothing was loaded"), std::string::npos);
  opt.pids = {getpid()};
  EXPECT_FALSE(KmodSource::create(opt));
  EXPECT_FALSE(check_target_pid(2)) << "kthreadd is a kernel thread";
  std::atomic<pid_t> tid{0};
  std::atomic<bool> done{false};
  std::thread t([&] {
    tid = static_cast<pid_t>(syscall(SYS_gettid));
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!tid) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto thread = check_target_pid(tid);
  done = true;
  t.join();
  ASSERT_FALSE(thread);
  EXPECT_NE(thread.error().message().find("is a thread of process " + std::to_string(getpid())), std::string::npos)
      << thread.error().to_string();
  opt.pids = {1, 1};
  EXPECT_FALSE(TargetProcesses(opt.pids).check()) << "the same pid twice";
}

// A python3 that holds 1 MiB of 0x5a in a bytearray and says where; waits on stdin.
class Victim {
 public:
  Victim() {
    int in[2], out[2];
    EXPECT_EQ(pipe(in), 0);
    EXPECT_EQ(pipe(out), 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      close(in[1]);
      close(out[0]);
      execl("/usr/bin/python3", "python3", "-c",
            "import ctypes, sys\n"
            "b = bytearray(b'\\x5a' * (1 << 20))\n"
            "print(ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b)), flush=True)\n"
            "for line in sys.stdin: print(line.strip() + ' back', flush=True)\n",
            nullptr);
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = fdopen(in[1], "w");
    from_ = fdopen(out[0], "r");
    address_ = std::stoull(line());
  }
  ~Victim() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    fclose(to_);
    fclose(from_);
  }
  std::string line() {
    char buf[256] = {};
    if (!fgets(buf, sizeof buf, from_)) return "";
    std::string s(buf);
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  std::string echo(const std::string& s) {
    fprintf(to_, "%s\n", s.c_str());
    fflush(to_);
    return line();
  }
  pid_t pid() const { return pid_; }
  uint64_t address() const { return address_; }

 private:
  pid_t pid_ = 0;
  FILE *to_ = nullptr, *from_ = nullptr;
  uint64_t address_ = 0;
};

TEST(Targets, PagemapOfARealProcessWhileFrozen) {
  if (geteuid() != 0) GTEST_SKIP() << "page frame numbers are shown to CAP_SYS_ADMIN only";
  Victim v;
  ASSERT_GT(v.address(), 0u);
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  TargetProcesses t({v.pid()});
  ASSERT_TRUE(t.check());
  auto frozen = t.freeze(std::chrono::seconds(10));
  ASSERT_TRUE(frozen) << frozen.error().to_string();
  auto recorded = t.record(page);
  ASSERT_TRUE(recorded) << recorded.error().to_string();
  ASSERT_TRUE(t.thaw());
  EXPECT_EQ(v.echo("still"), "still back") << "the victim runs on after the thaw";

  ASSERT_EQ(t.records().size(), 1u);
  const TargetRecord& r = t.records()[0];
  EXPECT_EQ(r.comm, "python3");
  EXPECT_EQ(r.cmdline.rfind("python3 -c import ctypes", 0), 0u) << r.cmdline;
  EXPECT_GE(r.threads, 1u);
  auto records = parse_pagemap_stream(t.pagemap_stream());
  ASSERT_TRUE(records) << records.error().to_string();
  size_t readable = 0;
  for (const auto& m : r.maps) readable += pagemap_recorded(m);
  EXPECT_EQ(records->size(), readable);
  EXPECT_EQ(r.pagemap_records, readable);
  for (const auto& rec : *records) {
    EXPECT_EQ(rec.pid, static_cast<uint32_t>(v.pid()));
    EXPECT_NE(rec.start, 0xffffffffff600000u) << "[vsyscall] is left out";
  }

  // Every page of the bytearray is present, with a frame inside this host's System RAM.
  auto tree = read_iomem();
  ASSERT_TRUE(tree);
  const auto ram = all_system_ram(*tree);
  const uint64_t first = (v.address() + page - 1) / page * page, last = (v.address() + (1u << 20)) / page * page;
  size_t checked = 0;
  std::set<uint64_t> frames;
  for (const auto& rec : *records)
    for (size_t i = 0; i < rec.entries.size(); ++i) {
      const uint64_t va = rec.start + i * page;
      if (va < first || va >= last) continue;
      const uint64_t e = rec.entries[i];
      ASSERT_TRUE(e & kPagemapPresent) << hex_address(va);
      const uint64_t pa = (e & kPagemapPfnMask) * page;
      ASSERT_NE(pa, 0u);
      EXPECT_TRUE(std::any_of(ram.begin(), ram.end(), [&](const PhysRange& x) { return x.start <= pa && pa <= x.end; }))
          << hex_address(pa);
      frames.insert(pa);
      ++checked;
    }
  EXPECT_EQ(checked, (last - first) / page);
  EXPECT_EQ(frames.size(), checked) << "distinct frames";

  // The page sample: present pages of private writable memory, hashed while frozen.
  ASSERT_FALSE(r.page_sample.empty());
  EXPECT_LE(r.page_sample.size(), 8u);
  for (const PageSample& s : r.page_sample) {
    EXPECT_EQ(s.sha256.size(), 64u);
    bool present = false;
    for (const auto& rec : *records)
      if (s.vaddr >= rec.start && s.vaddr < rec.start + rec.entries.size() * page)
        present = rec.entries[(s.vaddr - rec.start) / page] & kPagemapPresent;
    EXPECT_TRUE(present) << hex_address(s.vaddr);
  }
  const json::Json j = t.processes_json();
  EXPECT_EQ(j[0]["pid"], v.pid());
  EXPECT_EQ(j[0]["pagemap_records"], readable);
  EXPECT_EQ(j[0]["maps"].size(), r.maps.size());
}

TEST(Targets, SpreadSample) {
  std::vector<uint64_t> c;
  for (uint64_t i = 0; i < 100; ++i) c.push_back(i);
  EXPECT_EQ(spread_sample(c, 4), (std::vector<uint64_t>{12, 37, 62, 87}));
  EXPECT_EQ(spread_sample({1, 2}, 8), (std::vector<uint64_t>{1, 2}));
}

// ---- side streams in the capture path ----

class SideStreamSource final : public CaptureSource {
 public:
  std::vector<std::string>& log;
  explicit SideStreamSource(std::vector<std::string>& l) : log(l) {}
  std::string name() const override { return "lime"; }
  uint64_t expected_bytes() const override { return 10; }
  Status freeze() override { return {}; }
  Status read(bundle::BundleWriter& w, bool) override {
    MLFX_TRY(w.begin_stream("memory", "test"));
    return w.write(as_bytes(std::string_view("image")));
  }
  Status thaw() override {  // idempotent, as the interface says
    if (!thawed_) log.push_back("thaw");
    thawed_ = true;
    return {};
  }
  void stream_sealed(const bundle::StreamInfo&) override { log.push_back("sealed"); }
  Status write_side_streams(bundle::BundleWriter& w) override {
    log.push_back("side");
    for (const char* name : {"pagemap", "kallsyms"}) {
      MLFX_TRY(w.begin_stream(name, "test"));
      MLFX_TRY(w.write(as_bytes(std::string_view(name))));
      MLFX_TRY(w.end_stream());
    }
    return {};
  }
  json::Json manifest_context() const override { return json::Json::object(); }
  std::string context_stream() const override { return "context"; }
  std::string context_stream_source() const override { return "test"; }
  json::Json context() const override {
    log.push_back("context");
    return {{"source", "lime"}};
  }
  json::Json acquisition() const override { return json::Json::object(); }
  bool complete() const override { return true; }

 private:
  bool thawed_ = false;
};

TEST(CapturePath, SideStreamsAfterTheThawBeforeTheContext) {
  testing::TempDir dir;
  auto keys = testing::make_keys();
  std::vector<std::string> log;
  SideStreamSource s(log);
  auto out = File::create_new(dir.path() + "/b.mlfx", 0600);
  ASSERT_TRUE(out);
  auto r = capture_to_bundle({&s}, std::move(*out), *keys.device.signing, {keys.lab.box->public_key()}, {}, false);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(log, (std::vector<std::string>{"thaw", "sealed", "side", "context"}));
  std::vector<std::string> names;
  for (const auto& st : r->manifest.streams) names.push_back(st.name);
  EXPECT_EQ(names, (std::vector<std::string>{"memory", "pagemap", "kallsyms", "context"}));
}

}  // namespace
}  // namespace mlfx::agent::physical
