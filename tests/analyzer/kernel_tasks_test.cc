// The task walk on the synthetic kernel of the fuzz seeds (tests/fuzz/synthetic_kernel.h),
// laid out with its own reduced BTF and with this host's real BTF: a LiME image holding a
// KASLR'd kernel image (phys_base wrapping below zero), init_top_pgt with the image and direct
// mappings (4 and 5 levels), init_task's list of tasks, a process with a maple tree of VMAs
// (one file-backed, with its dentries and mount), its user page tables (present, swapped,
// absent, out-of-image pages and a 2 MiB page) and its command line; then hostile variants.
#include "kernel/tasks.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <tuple>

#include "layers/lime_layer.h"
#include "synthetic_image.h"
#include "synthetic_kernel.h"
#include "test_util.h"

namespace mlfx::kernel {
namespace {

using fuzz::kSeedBanner;
using fuzz::kSeedHugeVma;
using fuzz::SyntheticKernel;

// Which BTF the scene is laid out with.
enum class BtfSource { kSynthetic, kHost };

class KernelTasks : public ::testing::TestWithParam<std::tuple<int, BtfSource>> {
 protected:
  void SetUp() override {
    const auto [levels, source] = GetParam();
    if (source == BtfSource::kSynthetic) {
      k = std::make_unique<SyntheticKernel>(levels, /*maple_tree=*/true);
      return;
    }
    if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "no /sys/kernel/btf/vmlinux here";
    k = std::make_unique<SyntheticKernel>(levels, mlfx::testing::read_file("/sys/kernel/btf/vmlinux"));
    if (!k->maple_tree()) GTEST_SKIP() << "this host's kernel predates the maple tree";
  }
  int levels() const { return std::get<0>(GetParam()); }
  // The kernel in the scene as it is now (after any damage done to it).
  Result<std::unique_ptr<KernelImage>> open(const std::string& banner = kSeedBanner) {
    const fuzz::KernelSeed seed = k->seed();
    auto file = std::make_shared<fuzz::MemoryLayer>(std::vector<uint8_t>(seed.lime.begin(), seed.lime.end()));
    MLFX_ASSIGN(std::unique_ptr<layers::LimeLayer> lime, layers::LimeLayer::open(std::move(file)));
    return KernelImage::open(std::shared_ptr<const layers::SegmentedLayer>(std::move(lime)), seed.kallsyms, seed.btf,
                             banner);
  }
  std::unique_ptr<SyntheticKernel> k;
};

TEST_P(KernelTasks, FindsTheKernelWalksTheTasksAndRebuildsAProcess) {
  auto img = open();
  ASSERT_TRUE(img) << img.error().to_string();
  const KernelImage& ki = **img;
  EXPECT_EQ(ki.space().phys_base(), k->phys_base());
  EXPECT_EQ(ki.space().levels(), levels());
  EXPECT_EQ(ki.space().root(), SyntheticKernel::kTextPa + 0x2000);
  Diagnostics diag;
  const std::vector<Task> tasks = ki.tasks(diag);
  EXPECT_TRUE(diag.warnings().empty()) << diag.warnings().front();
  ASSERT_EQ(tasks.size(), 4u);
  EXPECT_EQ(tasks[0].pid, 0);
  EXPECT_EQ(tasks[0].comm, "swapper/0");
  EXPECT_EQ(tasks[1].comm, "systemd");
  EXPECT_EQ(tasks[2].mm, 0u);  // a kernel thread
  const Task& py = tasks[3];
  EXPECT_EQ(py.pid, 4242);
  EXPECT_EQ(py.comm, "python3");
  EXPECT_EQ(py.ppid, 0);
  EXPECT_EQ(py.uid, 1000);
  EXPECT_EQ(py.threads, 3);
  EXPECT_EQ(py.pgd_physical, k->scene().user_pgd_physical);

  const std::vector<Vma> vmas = ki.vmas(py, diag);
  EXPECT_TRUE(diag.warnings().empty()) << diag.warnings().front();
  ASSERT_EQ(vmas.size(), 4u);  // the stale slot past the leaf's end is not one
  EXPECT_EQ(vmas[0].start, 0x400000u);
  EXPECT_EQ(vmas[0].end, 0x402000u);
  EXPECT_EQ(vmas[0].perms(), "r-xp");
  EXPECT_EQ(vmas[0].path, "/usr/bin/python3");
  EXPECT_EQ(vmas[1].path, "[heap]");
  EXPECT_EQ(vmas[1].perms(), "rw-p");
  EXPECT_EQ(vmas[2].start, kSeedHugeVma);
  EXPECT_EQ(vmas[2].path, "");  // anonymous
  EXPECT_EQ(vmas[3].path, "[stack]");

  auto space = ki.user_space(py);
  ASSERT_TRUE(space);
  PageCounts text = KernelImage::count_pages(**space, 0x400000, 0x402000, diag);
  EXPECT_EQ(text.in_image, 1u);
  EXPECT_EQ(text.not_present, 1u);
  PageCounts heap = KernelImage::count_pages(**space, 0x600000, 0x604000, diag);
  EXPECT_EQ(heap.in_image, 2u);
  EXPECT_EQ(heap.swapped, 1u);
  EXPECT_EQ(heap.not_in_image, 1u);  // present, but its frame is not in the image

  auto p = ki.process_image(py, diag);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->facts.pid, 4242);
  EXPECT_EQ(p->facts.command, "python3");
  EXPECT_EQ(p->facts.args, "python3 victim.py");
  EXPECT_EQ(p->facts.threads, 3u);
  EXPECT_EQ(p->facts.image_bytes, 6u * 4096);  // text 1, heap 2, huge 2, stack 1
  ASSERT_EQ(p->mapped_files.size(), 1u);
  EXPECT_EQ(p->mapped_files[0].path, "/usr/bin/python3");
  char elf[4];
  ASSERT_TRUE(p->memory->read(0x400000, elf, 4));
  EXPECT_EQ(std::string(elf, 4), "\x7f" "ELF");
  EXPECT_FALSE(p->memory->is_mapped(0x601000, 1));  // swapped: not invented
  ASSERT_FALSE(p->warnings.empty());
  EXPECT_NE(p->warnings[0].find("1 page(s) swapped"), std::string::npos);
  EXPECT_FALSE(ki.user_space(tasks[2]));  // a kernel thread has none
}

TEST_P(KernelTasks, ABannerFromAnotherKernelIsRefused) {
  auto img = open("Linux version 6.1.0-99-amd64 (someone else)\n");
  ASSERT_FALSE(img);
  EXPECT_NE(img.error().to_string().find("banner"), std::string::npos) << img.error().to_string();
  EXPECT_FALSE(open(""));
}

TEST_P(KernelTasks, AWrongPhysBaseVariableIsRefused) {
  k->put64(k->sym("phys_base"), 0x1000000);
  auto img = open();
  ASSERT_FALSE(img);
  EXPECT_NE(img.error().to_string().find("phys_base"), std::string::npos) << img.error().to_string();
}

TEST_P(KernelTasks, ALoopingTaskListStopsWithAWarning) {
  const uint64_t t = k->off("task_struct", "tasks");
  k->put64(k->scene().kthreadd + t, k->scene().systemd + t);  // kthreadd -> systemd again
  auto img = open();
  ASSERT_TRUE(img) << img.error().to_string();
  Diagnostics diag;
  EXPECT_EQ((*img)->tasks(diag).size(), 3u);
  ASSERT_FALSE(diag.warnings().empty());
  EXPECT_NE(diag.warnings().back().find("loops"), std::string::npos) << diag.warnings().back();
}

TEST_P(KernelTasks, VmasThatDisagreeWithTheirSlotOrMmAreSkipped) {
  const SyntheticKernel::Scene& scene = k->scene();
  k->put64(scene.heap + k->off("vm_area_struct", "vm_end"), 0x605000);  // not its slot's range
  k->put64(scene.stack + k->off("vm_area_struct", "vm_mm"), scene.mm + 64);  // another mm's
  auto img = open();
  ASSERT_TRUE(img);
  Diagnostics diag;
  auto tasks = (*img)->tasks(diag);
  ASSERT_EQ(tasks.size(), 4u);
  const std::vector<Vma> vmas = (*img)->vmas(tasks[3], diag);
  ASSERT_EQ(vmas.size(), 2u);
  EXPECT_EQ(vmas[0].path, "/usr/bin/python3");
  EXPECT_EQ(vmas[1].start, kSeedHugeVma);
  EXPECT_EQ(diag.warnings().size(), 2u);
}

TEST_P(KernelTasks, ADeadMapleNodeIsSkipped) {
  // The second leaf's parent pointer names the leaf itself: the kernel's mark of a freed node.
  const uint64_t leaf2 = k->scene().leaf2 & ~255ull;
  k->put64(leaf2, leaf2 | 1);  // its parent is itself: a dead node
  auto img = open();
  ASSERT_TRUE(img);
  Diagnostics diag;
  auto tasks = (*img)->tasks(diag);
  const std::vector<Vma> vmas = (*img)->vmas(tasks[3], diag);
  EXPECT_EQ(vmas.size(), 1u);  // the text, from the first leaf
  ASSERT_FALSE(diag.warnings().empty());
  EXPECT_NE(diag.warnings()[0].find("dead"), std::string::npos) << diag.warnings()[0];
}

INSTANTIATE_TEST_SUITE_P(LevelsAndBtf, KernelTasks,
                         ::testing::Combine(::testing::Values(4, 5),
                                            ::testing::Values(BtfSource::kSynthetic, BtfSource::kHost)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "level" +
                                  (std::get<1>(info.param) == BtfSource::kHost ? "HostBtf" : "SyntheticBtf");
                         });

}  // namespace
}  // namespace mlfx::kernel
