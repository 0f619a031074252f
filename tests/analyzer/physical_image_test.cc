// A process rebuilt from a physical image (LiME ranges) and its raw pagemap, both built here
// from their documented formats (protocol/doc/physical-capture.md): pages land where the
// pagemap puts them, holes and swapped pages stay unmapped and are counted, and a context or
// pagemap from another capture is refused (banner, page sample). Hostile pagemap streams too.
#include "physical/physical_image.h"

#include <gtest/gtest.h>

#include "layers/file_layer.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx::physical {
namespace {

constexpr uint64_t kPage = 4096;
const std::string kBanner = "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP";

void put(std::string& s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::string lime_range(uint64_t start, const std::string& bytes) {
  std::string h;
  put(h, 0x4C694D45, 4), put(h, 1, 4), put(h, start, 8), put(h, start + bytes.size() - 1, 8), put(h, 0, 8);
  return h + bytes;
}

std::string page_of(char c) { return std::string(kPage, c); }

struct Record {
  uint32_t pid;
  uint64_t start;
  std::vector<uint64_t> entries;
};

std::string pagemap(const std::vector<Record>& records, const char* magic = "MLFXPMAP", uint32_t version = 1) {
  std::string s(magic, 8);
  put(s, version, 4), put(s, records.size(), 4);
  for (const Record& r : records) {
    put(s, r.pid, 4), put(s, 0, 4), put(s, r.start, 8), put(s, r.entries.size(), 8);
    for (uint64_t e : r.entries) put(s, e, 8);
  }
  return s;
}

uint64_t present(uint64_t pfn) { return kPagePresent | pfn; }

json::Json context(const std::string& banner, json::Json samples = json::Json::array()) {
  return {{"source", "kmod"},
          {"kernel", {{"banner", banner + "\n"}, {"release", "6.1.0-57-amd64"}, {"machine", "x86_64"}, {"page_size", kPage}}},
          {"processes",
           {{{"pid", 4242},
             {"comm", "python3"},
             {"cmdline", "python3 victim.py"},
             {"maps", {{{"start", 0x400000}, {"end", 0x406000}, {"perms", "rw-p"}, {"offset", 0}, {"inode", 0}, {"path", ""}},
                       {{"start", 0x7f0000000000}, {"end", 0x7f0000001000}, {"perms", "r--p"}, {"offset", 0x2000},
                        {"inode", 77}, {"path", "/usr/lib/libfoo.so"}}}},
             {"page_sample", samples}}}}};
}

class Physical : public ::testing::Test {
 protected:
  std::shared_ptr<const layers::Layer> file(const std::string& bytes) {
    const std::string path = dir / ("f" + std::to_string(n_++));
    testing::write_file(path, bytes);
    auto f = layers::FileLayer::open(path);
    EXPECT_TRUE(f) << f.error().to_string();
    return std::shared_ptr<const layers::Layer>(std::move(*f));
  }
  // Physical frames 0x10..0x13 hold pages 'A'..'D', frame 0x20 the banner; frame 0x14 is a
  // hole (not in the image).
  std::string image() {
    return lime_range(0x10 * kPage, page_of('A') + page_of('B') + page_of('C') + page_of('D')) +
           lime_range(0x20 * kPage, kBanner + std::string(kPage - kBanner.size(), '\0'));
  }
  Result<PhysicalImage> open(const std::string& pm, const json::Json& ctx) {
    return PhysicalImage::open(file(image()), ctx.dump(), file(pm));
  }
  testing::TempDir dir;
  int n_ = 0;
};

TEST_F(Physical, PagesLandWhereThePagemapPutsThemAndHolesStayUnmapped) {
  // Virtual 0x400000.. : frames 0x11, 0x12 (contiguous in the image), 0x10, then swapped,
  // never touched, and a frame outside the image.
  const std::string pm = pagemap({{4242, 0x400000,
                                   {present(0x11), present(0x12), present(0x10), kPageSwapped | (5 << 5), 0,
                                    present(0x14)}},
                                  {4242, 0x7f0000000000, {present(0x13)}}});
  const std::string sample_b = crypto::sha256_hex(as_bytes(page_of('B')));
  auto img = open(pm, context(kBanner, {{{"vaddr", 0x400000}, {"sha256", sample_b}}}));
  ASSERT_TRUE(img) << img.error().to_string();
  EXPECT_TRUE(img->check_banner());
  EXPECT_EQ(img->pids_with_pagemap(), std::vector<int32_t>{4242});
  auto p = img->process(4242);
  ASSERT_TRUE(p) << p.error().to_string();
  const layers::Layer& mem = *p->image.memory;
  char c = 0;
  ASSERT_TRUE(mem.read(0x400000 + 17, &c, 1));
  EXPECT_EQ(c, 'B');
  ASSERT_TRUE(mem.read(0x402000, &c, 1));
  EXPECT_EQ(c, 'A');
  ASSERT_TRUE(mem.read(0x7f0000000fff, &c, 1));
  EXPECT_EQ(c, 'D');
  // Frames 0x11 and 0x12 follow each other in the image: one zero-copy view across them.
  EXPECT_NE(mem.view(0x400000, 2 * kPage), nullptr);
  EXPECT_EQ(mem.mapped_run(0x400000, 16 * kPage), 2 * kPage);  // one segment
  EXPECT_TRUE(mem.is_mapped(0x400000, 3 * kPage));
  EXPECT_FALSE(mem.is_mapped(0x400000, 4 * kPage));
  // Swapped, untouched and outside the image: not mapped, never zeros.
  EXPECT_FALSE(mem.is_mapped(0x403000, 1));
  EXPECT_FALSE(mem.is_mapped(0x404000, 1));
  EXPECT_FALSE(mem.is_mapped(0x405000, 1));
  EXPECT_EQ(p->pages.in_image, 4u);
  EXPECT_EQ(p->pages.swapped, 1u);
  EXPECT_EQ(p->pages.not_present, 1u);
  EXPECT_EQ(p->pages.not_in_image, 1u);
  EXPECT_EQ(p->samples_checked, 1u);
  EXPECT_EQ(p->image.facts.pid, 4242);
  EXPECT_EQ(p->image.facts.command, "python3");
  EXPECT_EQ(p->image.facts.image_bytes, 4 * kPage);
  ASSERT_EQ(p->image.mapped_files.size(), 1u);  // anonymous mappings are not files
  EXPECT_EQ(p->image.mapped_files[0].path, "/usr/lib/libfoo.so");
  EXPECT_EQ(p->image.mapped_files[0].file_offset, 0x2000u);
  EXPECT_EQ(p->image.warnings.size(), 2u);  // the frame outside the image, the swapped page
}

TEST_F(Physical, AContextFromAnotherCaptureIsRefused) {
  const std::string pm = pagemap({{4242, 0x400000, {present(0x11)}}});
  // Another kernel: its banner is nowhere in the image.
  auto other_kernel = open(pm, context("Linux version 6.12.0-1-amd64 (debian-kernel@lists.debian.org) #1 SMP"));
  ASSERT_TRUE(other_kernel);
  EXPECT_NE(other_kernel->check_banner().error().to_string().find("does not belong to this image"), std::string::npos);
  // Same kernel, another capture: the sampled page hashes differently here.
  const std::string sample_c = crypto::sha256_hex(as_bytes(page_of('C')));
  auto other_capture = open(pm, context(kBanner, {{{"vaddr", 0x400000}, {"sha256", sample_c}}}));
  ASSERT_TRUE(other_capture);
  EXPECT_TRUE(other_capture->check_banner());
  auto p = other_capture->process(4242);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().to_string().find("differs from that page in the image"), std::string::npos) << p.error().to_string();
}

TEST_F(Physical, AProcessWithoutPagemapOrPfnsIsExplained) {
  auto img = open(pagemap({{4242, 0x400000, {kPagePresent}}}), context(kBanner));  // PFN hidden
  ASSERT_TRUE(img);
  auto p = img->process(4242);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().to_string().find("CAP_SYS_ADMIN"), std::string::npos);
  auto absent = img->process(7);
  ASSERT_FALSE(absent);
  EXPECT_NE(absent.error().to_string().find("not among the processes"), std::string::npos);
}

TEST_F(Physical, HostilePagemapStreamsAreRefusedSayingWhat) {
  auto refusal = [&](const std::string& pm) {
    auto img = open(pm, context(kBanner));
    return img ? std::string() : img.error().to_string();
  };
  EXPECT_NE(refusal(pagemap({}, "NOTAPMAP")).find("no MLFXPMAP magic"), std::string::npos);
  EXPECT_NE(refusal(pagemap({}, "MLFXPMAP", 2)).find("version 2"), std::string::npos);
  EXPECT_NE(refusal("MLFX").find("shorter than its header"), std::string::npos);
  std::string truncated = pagemap({{4242, 0x400000, {present(0x10), present(0x11)}}});
  truncated.resize(truncated.size() - 8);
  EXPECT_NE(refusal(truncated).find("run past the end"), std::string::npos);
  std::string lying_count = pagemap({{4242, 0x400000, {present(0x10)}}});
  lying_count[12] = 2;  // says two records, holds one
  EXPECT_NE(refusal(lying_count).find("cut short"), std::string::npos);
  EXPECT_NE(refusal(pagemap({{4242, 0x400001, {present(0x10)}}})).find("not page-aligned"), std::string::npos);
  EXPECT_NE(refusal(pagemap({{4242, 0xfffffffffffff000, {present(0x10), present(0x11)}}})).find("wraps"), std::string::npos);
  EXPECT_NE(refusal(pagemap({{99, 0x400000, {present(0x10)}}})).find("not among the context's processes"), std::string::npos);
  EXPECT_NE(refusal(pagemap({{4242, 0x400000, {present(0x10)}}}) + "x").find("after the last record"), std::string::npos);
  // Overlapping records of one process: refused when the process is rebuilt.
  auto img = open(pagemap({{4242, 0x400000, {present(0x10), present(0x11)}}, {4242, 0x401000, {present(0x12)}}}),
                  context(kBanner));
  ASSERT_TRUE(img);
  EXPECT_FALSE(img->process(4242));
}

// LiME pads a range that ends inside a page with zeros; the context lists them (zero_filled)
// and they are absent here, not data.
TEST_F(Physical, BytesTheToolZeroFilledAreAbsent) {
  json::Json ctx = context(kBanner);
  ctx["zero_filled"] = {{{"start", 0x11 * kPage + 100}, {"end", 0x11 * kPage + 199}, {"reason", "partial page"}},
                        {{"start", 0x13 * kPage}, {"end", 0x13 * kPage + kPage - 1}, {"reason", "partial page"}}};
  auto img = open(pagemap({{4242, 0x400000, {present(0x11), present(0x13)}}}), ctx);
  ASSERT_TRUE(img) << img.error().to_string();
  const layers::SegmentedLayer& phys = img->physical();
  EXPECT_TRUE(phys.is_mapped(0x11 * kPage, 100));
  EXPECT_FALSE(phys.is_mapped(0x11 * kPage + 100, 1));
  EXPECT_FALSE(phys.is_mapped(0x11 * kPage + 199, 1));
  EXPECT_TRUE(phys.is_mapped(0x11 * kPage + 200, kPage - 200));
  EXPECT_FALSE(phys.is_mapped(0x13 * kPage, 1));
  EXPECT_TRUE(phys.is_mapped(0x20 * kPage, 1));
  char c = 0;
  ASSERT_TRUE(phys.read(0x11 * kPage + 200, &c, 1));
  EXPECT_EQ(c, 'B');
  auto p = img->process(4242);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->pages.in_image, 0u);  // neither page is whole in the image any more
  EXPECT_EQ(p->pages.not_in_image, 2u);
}

// A page the kernel moved while the image was read: its pagemap entry is zeroed and its bytes,
// read from the frozen process, come in the moved stream; hostile moved streams are refused.
TEST_F(Physical, PagesMovedDuringTheCaptureComeFromTheMovedStream) {
  std::string moved = "MLFXMOVD";
  auto add = [&](uint32_t pid, uint64_t vaddr, char c) {
    put(moved, pid, 4), put(moved, 0, 4), put(moved, vaddr, 8);
    moved += page_of(c);
  };
  put(moved, 1, 4), put(moved, 1, 4);
  add(4242, 0x401000, 'M');
  json::Json ctx = context(kBanner);
  ctx["processes"][0]["pages_moved"] = 1;
  auto img = PhysicalImage::open(file(image()), ctx.dump(), file(pagemap({{4242, 0x400000, {present(0x11), 0, present(0x10)}}})),
                                 file(moved));
  ASSERT_TRUE(img) << img.error().to_string();
  auto p = img->process(4242);
  ASSERT_TRUE(p) << p.error().to_string();
  std::string got(3 * kPage, '\0');
  ASSERT_TRUE(p->image.memory->read(0x400000, got.data(), got.size()));
  EXPECT_EQ(got, page_of('B') + page_of('M') + page_of('A'));
  EXPECT_EQ(p->pages_moved, 1u);
  EXPECT_EQ(p->pages_moved_supplied, 1u);
  EXPECT_EQ(p->image.facts.image_bytes, 3 * kPage);

  auto refusal = [&](const std::string& m) {
    auto i = PhysicalImage::open(file(image()), ctx.dump(), file(pagemap({{4242, 0x400000, {present(0x11)}}})), file(m));
    return i ? std::string() : i.error().to_string();
  };
  EXPECT_NE(refusal("MLFXMOVX" + moved.substr(8)).find("no MLFXMOVD magic"), std::string::npos);
  EXPECT_NE(refusal(moved.substr(0, moved.size() - 1)).find("do not fill"), std::string::npos);
  std::string lying = moved;
  lying[12] = 9;
  EXPECT_NE(refusal(lying).find("do not fill"), std::string::npos);
  std::string stranger = moved;
  stranger[16] = 7;  // pid 4242 -> another
  EXPECT_NE(refusal(stranger).find("not among the context's processes"), std::string::npos);
  std::string unaligned = moved;
  unaligned[24] = 1;
  EXPECT_NE(refusal(unaligned).find("is not a page"), std::string::npos);
  // A moved page where the pagemap still maps one: the overlap is refused when rebuilding.
  auto both = PhysicalImage::open(file(image()), ctx.dump(),
                                  file(pagemap({{4242, 0x400000, {present(0x11), present(0x12)}}})), file(moved));
  ASSERT_TRUE(both);
  EXPECT_FALSE(both->process(4242));
}

TEST_F(Physical, HostileContextsAreRefusedSayingWhich) {
  auto refusal = [&](const json::Json& ctx) {
    auto img = open(pagemap({}), ctx);
    return img ? std::string() : img.error().to_string();
  };
  json::Json c = context(kBanner);
  c["kernel"]["page_size"] = 12345;
  EXPECT_NE(refusal(c).find("not a page size"), std::string::npos);
  c = context(kBanner);
  c["processes"][0]["pid"] = -1;
  EXPECT_NE(refusal(c).find("processes[0].pid"), std::string::npos);
  c = context(kBanner);
  c["processes"][0]["maps"][0]["end"] = 0;
  EXPECT_NE(refusal(c).find("ends before it starts"), std::string::npos);
  c = context(kBanner);
  c["processes"].push_back(c["processes"][0]);
  EXPECT_NE(refusal(c).find("listed twice"), std::string::npos);
  auto not_json = PhysicalImage::open(file(image()), "{", nullptr);
  ASSERT_FALSE(not_json);
  EXPECT_NE(not_json.error().to_string().find("not a JSON object"), std::string::npos);
}

}  // namespace
}  // namespace mlfx::physical
