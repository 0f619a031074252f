// PageTableLayer over synthetic 4- and 5-level x86-64 page tables: 4 KiB, 2 MiB and 1 GiB
// pages, not-present and swapped entries, PROT_NONE, frames and tables outside the image.
#include "kernel/page_table.h"

#include <gtest/gtest.h>

#include "kernel/tasks.h"
#include "kernel_fixture.h"

namespace mlfx::kernel {
namespace {

using testing::FakePhysical;
using testing::PageTables;
using testing::kP;
using testing::kRW;

class PageTable : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    mem.add_region(0, 8 << 20);                       // 8 MiB of RAM at 0
    mem.add_region(uint64_t{1} << 30, 64 << 10);      // 64 KiB at 1 GiB: the rest of that GiB is not in the image
    mem.set_next_free(1 << 20);
  }
  std::unique_ptr<PageTableLayer> make(PageTables& pt, uint64_t limit = ~0ull) {
    auto l = PageTableLayer::create("test", mem.layer(), pt.root(), GetParam(), limit);
    EXPECT_TRUE(l) << l.error().to_string();
    return std::move(*l);
  }
  FakePhysical mem;
};

TEST_P(PageTable, FourKibPagesReadAcrossNonContiguousFrames) {
  PageTables pt(mem, GetParam());
  const uint64_t a = 0x300000, b = 0x200000;  // the second virtual page's frame lies below the first's
  pt.map(0x400000, a);
  pt.map(0x401000, b);
  mem.put(a + 0xffc, "ABCD");
  mem.put(b, "EFGH");
  auto l = make(pt);
  char got[8];
  ASSERT_TRUE(l->read(0x400ffc, got, 8));
  EXPECT_EQ(std::string(got, 8), "ABCDEFGH");
  EXPECT_EQ(l->view(0x400ffc, 8), nullptr);           // not one run of the image
  EXPECT_NE(l->view(0x400ffc, 4), nullptr);
  EXPECT_EQ(l->mapped_run(0x400ffc, 100), 4u);
  auto t = l->translate(0x401010);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->state, PageState::kPresent);
  EXPECT_EQ(t->physical_of(0x401010), b + 0x10);
  EXPECT_EQ(t->size, 4096u);
  EXPECT_EQ(t->level, 1);
  // Physically contiguous frames read as one run.
  pt.map(0x500000, 0x280000);
  pt.map(0x501000, 0x281000);
  auto l2 = make(pt);
  EXPECT_EQ(l2->mapped_run(0x500000, 0x2000), 0x2000u);
  EXPECT_NE(l2->view(0x500800, 0x1000), nullptr);
}

TEST_P(PageTable, LargePagesAndFramesOutsideTheImage) {
  PageTables pt(mem, GetParam());
  pt.map(0x40000000, 0x400000, 2 << 20);                       // 2 MiB page at phys 4 MiB
  pt.map(0x80000000, uint64_t{1} << 30, uint64_t{1} << 30);    // 1 GiB page, only 64 KiB in the image
  mem.put(0x400000 + 0x12345, "two");
  mem.put((uint64_t{1} << 30) + 0x100, "one");
  auto l = make(pt);
  char got[4] = {};
  ASSERT_TRUE(l->read(0x40012345, got, 3));
  EXPECT_EQ(std::string(got, 3), "two");
  ASSERT_TRUE(l->read(0x80000100, got, 3));
  EXPECT_EQ(std::string(got, 3), "one");
  auto t = l->translate(0x80000100);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->size, uint64_t{1} << 30);
  EXPECT_EQ(t->level, 3);
  // Present, but the frame is not in the image: unreadable, never zeros.
  auto far = l->translate(0x80010000);
  ASSERT_TRUE(far);
  EXPECT_EQ(far->state, PageState::kPresent);
  EXPECT_FALSE(l->is_mapped(0x80010000, 1));
  EXPECT_FALSE(l->read(0x8000fffe, got, 4));
  EXPECT_EQ(l->mapped_run(0x8000f000, 0x10000), 0x1000u);
  Diagnostics diag;
  PageCounts c = KernelImage::count_pages(*l, 0x80000000, 0x80000000 + (4 << 20), diag);
  EXPECT_EQ(c.in_image, 16u);
  EXPECT_EQ(c.not_in_image, 1024u - 16u);
  c = KernelImage::count_pages(*l, 0x40000000, 0x40400000, diag);  // a 2 MiB page and 2 MiB of nothing
  EXPECT_EQ(c.in_image, 512u);
  EXPECT_EQ(c.not_present, 512u);
}

TEST_P(PageTable, NotPresentSwappedAndProtNoneAreReportedNotInvented) {
  PageTables pt(mem, GetParam());
  pt.map(0x400000, 0x300000);
  pt.set(0x401000, 1, make_swap_entry(3, 0x12345));
  pt.set(0x402000, 1, 0);
  const uint64_t frame = 0x310000;
  mem.put(frame, "hidden");
  pt.set(0x403000, 1, (~frame & kPteAddressMask) | kPteProtNone | 0x60);  // PROT_NONE: inverted frame
  pt.set(0x200000000, 2, make_swap_entry(1, 77));                         // a swapped PMD (THP migration)
  auto l = make(pt);
  auto swapped = l->translate(0x401abc);
  ASSERT_TRUE(swapped);
  EXPECT_EQ(swapped->state, PageState::kSwapped);
  EXPECT_EQ(swapped->swap_type, 3u);
  EXPECT_EQ(swapped->swap_offset, 0x12345u);
  EXPECT_FALSE(l->is_mapped(0x401000, 1));
  auto none = l->translate(0x402000);
  ASSERT_TRUE(none);
  EXPECT_EQ(none->state, PageState::kNotPresent);
  auto pn = l->translate(0x403002);
  ASSERT_TRUE(pn);
  EXPECT_EQ(pn->state, PageState::kPresent);
  EXPECT_TRUE(pn->prot_none);
  char got[4];
  ASSERT_TRUE(l->read(0x403002, got, 4));
  EXPECT_EQ(std::string(got, 4), "dden");
  auto pmd = l->translate(0x200000000);
  ASSERT_TRUE(pmd);
  EXPECT_EQ(pmd->state, PageState::kSwapped);
  EXPECT_EQ(pmd->swap_offset, 77u);
  // Nothing mapped at all: the top-level entry is empty and covers its whole region.
  auto empty = l->translate(0x7f0000000000);
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->state, PageState::kNotPresent);
  EXPECT_EQ(empty->level, 4);  // the PML4 (or, with 5 levels, P4D) entry
  // A page table outside the image.
  pt.set(0x600000000, 2, 0x7000000 | kP | kRW);  // a PMD entry naming a PTE table at 112 MiB: not in the image
  auto l2 = make(pt);
  auto lost = l2->translate(0x600000000);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->state, PageState::kTableNotInImage);
  Diagnostics diag;
  PageCounts c = KernelImage::count_pages(*l2, 0x400000, 0x404000, diag);
  EXPECT_EQ(c.in_image, 2u);
  EXPECT_EQ(c.swapped, 1u);
  EXPECT_EQ(c.not_present, 1u);
  EXPECT_EQ(KernelImage::count_pages(*l2, 0x600000000, 0x600002000, diag).unknown, 2u);
}

TEST_P(PageTable, CanonicalAddressesAndTheUserLimit) {
  PageTables pt(mem, GetParam());
  const int levels = GetParam();
  const uint64_t kernel_va = levels == 5 ? 0xff11000000001000ull : 0xffff888000001000ull;
  pt.map(kernel_va, 0x300000);
  pt.map(0x1000, 0x301000);
  mem.put(0x300000, "kern");
  auto all = make(pt);
  char got[4];
  ASSERT_TRUE(all->read(kernel_va, got, 4));
  EXPECT_EQ(std::string(got, 4), "kern");
  // 2^48 and above is canonical only with 5 levels.
  const uint64_t high = uint64_t{1} << 50;
  pt.map(high, 0x302000);
  auto again = make(pt);
  EXPECT_EQ(static_cast<bool>(again->translate(high)), levels == 5);
  if (levels == 5) EXPECT_TRUE(again->is_mapped(high, 8));
  else EXPECT_FALSE(again->is_mapped(high, 8));
  auto user = make(pt, PageTableLayer::user_top(levels));
  EXPECT_TRUE(user->is_mapped(0x1000, 8));
  EXPECT_FALSE(user->is_mapped(kernel_va, 1));  // the kernel half is not the process's
}

INSTANTIATE_TEST_SUITE_P(Levels, PageTable, ::testing::Values(4, 5),
                         [](const auto& info) { return std::to_string(info.param) + "level"; });

}  // namespace
}  // namespace mlfx::kernel
