// The task walk on a synthetic kernel laid out with this host's real BTF: a physical image
// holding a KASLR'd kernel image (phys_base wrapping below zero), init_top_pgt with the image
// and direct mappings (4 and 5 levels), init_task's list of tasks, a process with a maple tree
// of VMAs (one file-backed, with its dentries and mount), its user page tables (present,
// swapped, absent pages) and its command line; then hostile variants.
#include "kernel/tasks.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include "kernel_fixture.h"
#include "test_util.h"

namespace mlfx::kernel {
namespace {

using testing::FakePhysical;
using testing::PageTables;
using testing::kP;
using testing::kRW;

constexpr uint64_t kTextVa = 0xffffffff9a000000ull;  // a KASLR'd _text
constexpr uint64_t kTextPa = 0x400000;               // where the image is in RAM
constexpr uint64_t kHeapPa = 0xc00000;               // kernel objects are allocated from here
const std::string kBanner = "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP "
                            "PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)\n";

class SyntheticKernel {
 public:
  SyntheticKernel(const Btf& btf, int levels) : btf_(btf), levels_(levels) {
    mem.add_region(0, 16 << 20);
    dm_ = levels == 5 ? 0xff11000000000000ull : 0xffff888000000000ull;
    mem.set_next_free(kTextPa + 0x2000);
    kpt_ = std::make_unique<PageTables>(mem, levels);  // init_top_pgt at _text + 0x2000
    mem.set_next_free(0x800000);                       // the other page tables
    for (uint64_t off = 0; off < (4 << 20); off += 2 << 20) kpt_->map(kTextVa + off, kTextPa + off, 2 << 20, kP | kRW);
    for (uint64_t pa = 0; pa < (16 << 20); pa += 2 << 20) kpt_->map(dm_ + pa, pa, 2 << 20, kP | kRW);
    heap_ = kHeapPa;
    mem.put(pa_of(sym("linux_banner")), kBanner + std::string(1, '\0'));
    mem.put64(pa_of(sym("phys_base")), phys_base());
    mem.put64(pa_of(sym("page_offset_base")), dm_);
    if (levels == 5) mem.put32(pa_of(sym("__pgtable_l5_enabled")), 1);
  }
  uint64_t dm() const { return dm_; }
  uint64_t phys_base() const { return kTextPa - (kTextVa - kStartKernelMap); }
  uint64_t sym(const std::string& name) const {
    static const std::map<std::string, uint64_t> at = {{"linux_banner", 0x1000}, {"init_top_pgt", 0x2000},
                                                       {"phys_base", 0x3000},    {"page_offset_base", 0x3008},
                                                       {"__pgtable_l5_enabled", 0x3010}, {"init_task", 0x10000}};
    return kTextVa + at.at(name);
  }
  std::string kallsyms() const {
    std::string s;
    for (const char* n : {"linux_banner", "init_top_pgt", "phys_base", "page_offset_base", "init_task"}) s += line(sym(n), n);
    if (levels_ == 5) s += line(sym("__pgtable_l5_enabled"), "__pgtable_l5_enabled");  // 4 levels: from page_offset_base
    return "ffffffff9a000000 T _text\n" + s;
  }
  static std::string line(uint64_t a, const char* n) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%016llx D %s\n", static_cast<unsigned long long>(a), n);
    return buf;
  }
  uint64_t pa_of(uint64_t va) const {
    return va >= kStartKernelMap ? va - kTextVa + kTextPa : va - dm_;
  }
  // A zeroed kernel object in the direct map.
  uint64_t kalloc(uint64_t size, uint64_t align = 64) {
    heap_ = (heap_ + align - 1) & ~(align - 1);
    const uint64_t pa = heap_;
    heap_ += size;
    mem.at(pa, size);
    return dm_ + pa;
  }
  uint64_t off(const char* s, const char* path) const {
    auto o = btf_.offset_of(s, path);
    if (!o) throw std::runtime_error(o.error().to_string());
    return *o;
  }
  void put64(uint64_t va, uint64_t v) { mem.put64(pa_of(va), v); }
  void put32(uint64_t va, uint32_t v) { mem.put32(pa_of(va), v); }
  void put(uint64_t va, const std::string& s) { mem.put(pa_of(va), s); }
  uint64_t string(const std::string& s) {
    const uint64_t va = kalloc(s.size() + 1, 8);
    put(va, s);
    return va;
  }

  uint64_t task(uint64_t at, int32_t pid, const std::string& comm, uint64_t mm) {
    put32(at + off("task_struct", "pid"), pid);
    put32(at + off("task_struct", "tgid"), pid);
    put(at + off("task_struct", "comm"), comm.substr(0, 15));
    put64(at + off("task_struct", "mm"), mm);
    put64(at + off("task_struct", "real_parent"), sym("init_task"));
    const uint64_t cred = kalloc(*btf_.size_of("cred"));
    put32(cred + off("cred", "uid.val"), pid == 4242 ? 1000 : 0);
    put64(at + off("task_struct", "real_cred"), cred);
    const uint64_t signal = kalloc(*btf_.size_of("signal_struct"));
    put32(signal + off("signal_struct", "nr_threads"), pid == 4242 ? 3 : 1);
    put64(at + off("task_struct", "signal"), signal);
    return at;
  }
  void link(const std::vector<uint64_t>& tasks) {
    const uint64_t t = off("task_struct", "tasks");
    for (size_t i = 0; i < tasks.size(); ++i) {
      const uint64_t next = tasks[(i + 1) % tasks.size()], prev = tasks[(i + tasks.size() - 1) % tasks.size()];
      put64(tasks[i] + t, next + t);
      put64(tasks[i] + t + 8, prev + t);
    }
  }
  uint64_t task_size() const { return *btf_.size_of("task_struct"); }

  // A dentry chain for an absolute path under one root mount.
  uint64_t file(const std::string& path, bool deleted = false) {
    if (!root_dentry_) {
      root_dentry_ = dentry("/", 0);
      mount_ = kalloc(*btf_.size_of("mount"));
      put64(mount_ + off("mount", "mnt") + off("vfsmount", "mnt_root"), root_dentry_);
      put64(mount_ + off("mount", "mnt_parent"), mount_);
      put64(mount_ + off("mount", "mnt_mountpoint"), root_dentry_);
    }
    uint64_t parent = root_dentry_;
    size_t at = 1;
    while (at < path.size()) {
      const size_t slash = path.find('/', at);
      const std::string name = path.substr(at, slash == std::string::npos ? std::string::npos : slash - at);
      parent = dentry(name, parent);
      at = slash == std::string::npos ? path.size() : slash + 1;
    }
    if (!deleted) put64(parent + off("dentry", "d_hash.pprev"), parent);  // hashed: any non-null
    const uint64_t f = kalloc(*btf_.size_of("file"));
    put64(f + off("file", "f_path.dentry"), parent);
    put64(f + off("file", "f_path.mnt"), mount_ + off("mount", "mnt"));
    return f;
  }
  uint64_t dentry(const std::string& name, uint64_t parent) {
    const uint64_t d = kalloc(*btf_.size_of("dentry"));
    put64(d + off("dentry", "d_parent"), parent ? parent : d);
    put32(d + off("dentry", "d_name.len"), static_cast<uint32_t>(name.size()));
    put64(d + off("dentry", "d_name.name"), string(name));
    return d;
  }
  uint64_t vma(uint64_t mm, uint64_t start, uint64_t end, uint64_t flags, uint64_t file = 0, uint64_t pgoff = 0) {
    const uint64_t v = kalloc(*btf_.size_of("vm_area_struct"));
    put64(v + off("vm_area_struct", "vm_start"), start);
    put64(v + off("vm_area_struct", "vm_end"), end);
    put64(v + off("vm_area_struct", "vm_flags"), flags);
    put64(v + off("vm_area_struct", "vm_pgoff"), pgoff);
    put64(v + off("vm_area_struct", "vm_file"), file);
    put64(v + off("vm_area_struct", "vm_mm"), mm);
    return v;
  }
  // A maple node: type 1 (leaf_64) or 3 (arange_64), pivots, slots and the metadata's end.
  uint64_t maple_node(int type, uint64_t parent, const std::vector<uint64_t>& pivots, const std::vector<uint64_t>& slots,
                      uint8_t end) {
    const char* s = type == 3 ? "maple_arange_64" : "maple_range_64";
    const uint64_t n = kalloc(256, 256);
    put64(n, parent);
    for (size_t i = 0; i < pivots.size(); ++i) put64(n + off(s, "pivot") + 8 * i, pivots[i]);
    for (size_t i = 0; i < slots.size(); ++i) put64(n + off(s, "slot") + 8 * i, slots[i]);
    mem.put(pa_of(n + off(s, "meta") + off("maple_metadata", "end")), std::string(1, static_cast<char>(end)));
    return n | (uint64_t(type) << 3) | 4;  // an encoded node (mt_mk_node)
  }

  FakePhysical mem;
  std::unique_ptr<PageTables> kpt_;

 private:
  const Btf& btf_;
  int levels_;
  uint64_t dm_ = 0, heap_ = 0, root_dentry_ = 0, mount_ = 0;
};

// The whole scene: init_task, pid 1 (with an mm but no VMAs), kthreadd, and python3 (4242).
struct Scene {
  uint64_t init, systemd, kthreadd, python, mm, vma_text, vma_heap, vma_stack, leaf2;
};

Scene build(SyntheticKernel& k, int levels) {
  Scene s{};
  s.init = k.task(k.sym("init_task"), 0, "swapper/0", 0);
  const uint64_t empty_mm = k.kalloc(4096, 4096);
  s.systemd = k.task(k.kalloc(k.task_size()), 1, "systemd", empty_mm);
  s.kthreadd = k.task(k.kalloc(k.task_size()), 2, "kthreadd", 0);
  s.mm = k.kalloc(4096, 4096);
  s.python = k.task(k.kalloc(k.task_size()), 4242, "python3", s.mm);
  k.link({s.init, s.systemd, s.kthreadd, s.python});

  // User page tables: root in the kernel heap, reached through mm->pgd (a direct-map address).
  k.mem.set_next_free(0xa00000);
  PageTables user(k.mem, levels);
  k.put64(s.mm + k.off("mm_struct", "pgd"), k.dm() + user.root());
  k.put64(empty_mm + k.off("mm_struct", "pgd"), k.dm() + user.root());
  const uint64_t frames = 0xb00000;
  user.map(0x400000, frames);              // text: present
  k.mem.put(frames, "\x7f" "ELF");
  user.map(0x600000, frames + 0x1000);     // heap: present, swapped, present
  user.set(0x601000, 1, make_swap_entry(0, 0x4321));
  user.map(0x602000, frames + 0x2000);
  user.map(0x7ffd1000, frames + 0x3000);   // stack: its upper page, holding argv
  k.mem.put(frames + 0x3f00, std::string("python3\0victim.py\0", 18));
  k.put64(s.mm + k.off("mm_struct", "arg_start"), 0x7ffd1f00);
  k.put64(s.mm + k.off("mm_struct", "arg_end"), 0x7ffd1f00 + 18);
  k.put64(s.mm + k.off("mm_struct", "start_brk"), 0x600000);
  k.put64(s.mm + k.off("mm_struct", "brk"), 0x603000);
  k.put64(s.mm + k.off("mm_struct", "start_stack"), 0x7ffd1f00);

  s.vma_text = k.vma(s.mm, 0x400000, 0x402000, 0x5 | 0x70, k.file("/usr/bin/python3"));
  s.vma_heap = k.vma(s.mm, 0x600000, 0x603000, 0x3 | 0x70);
  s.vma_stack = k.vma(s.mm, 0x7ffd0000, 0x7ffd2000, 0x3 | 0x70);
  const uint64_t stale = k.vma(s.mm, 0x900000, 0x901000, 0x3);  // beyond the node's end: must be ignored
  const uint64_t parent = 0;  // any value but the node itself (ma_dead_node)
  const uint64_t leaf1 = k.maple_node(1, parent, {0x3fffff, 0x401fff, 0x5fffff}, {0, s.vma_text, 0}, 2);
  s.leaf2 = k.maple_node(1, parent, {0x602fff, 0x7ffcffff, 0x7ffd1fff, ~0ull}, {s.vma_heap, 0, s.vma_stack, 0, stale}, 3);
  const uint64_t root = k.maple_node(3, s.mm | 1, {0x5fffff, ~0ull}, {leaf1, s.leaf2}, 1);
  k.put64(s.mm + k.off("mm_struct", "mm_mt") + k.off("maple_tree", "ma_root"), root | 2);  // mt_mk_root
  return s;
}

class KernelTasks : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "no /sys/kernel/btf/vmlinux here";
    blob = mlfx::testing::read_file("/sys/kernel/btf/vmlinux");
    auto b = Btf::parse(blob);
    ASSERT_TRUE(b) << b.error().to_string();
    btf = std::move(*b);
    if (!btf.has_member("mm_struct", "mm_mt")) GTEST_SKIP() << "this host's kernel predates the maple tree";
    k = std::make_unique<SyntheticKernel>(btf, GetParam());
    scene = build(*k, GetParam());
  }
  Result<std::unique_ptr<KernelImage>> open(const std::string& banner = kBanner) {
    return KernelImage::open(k->mem.layer(), k->kallsyms(), blob, banner);
  }
  std::string blob;
  Btf btf;
  std::unique_ptr<SyntheticKernel> k;
  Scene scene;
};

TEST_P(KernelTasks, FindsTheKernelWalksTheTasksAndRebuildsAProcess) {
  auto img = open();
  ASSERT_TRUE(img) << img.error().to_string();
  const KernelImage& ki = **img;
  EXPECT_EQ(ki.space().phys_base(), k->phys_base());
  EXPECT_EQ(ki.space().levels(), GetParam());
  EXPECT_EQ(ki.space().root(), kTextPa + 0x2000);
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
  EXPECT_EQ(py.pgd_physical, 0xa00000u);

  const std::vector<Vma> vmas = ki.vmas(py, diag);
  EXPECT_TRUE(diag.warnings().empty()) << diag.warnings().front();
  ASSERT_EQ(vmas.size(), 3u);  // the stale slot past the leaf's end is not one
  EXPECT_EQ(vmas[0].start, 0x400000u);
  EXPECT_EQ(vmas[0].end, 0x402000u);
  EXPECT_EQ(vmas[0].perms(), "r-xp");
  EXPECT_EQ(vmas[0].path, "/usr/bin/python3");
  EXPECT_EQ(vmas[1].path, "[heap]");
  EXPECT_EQ(vmas[1].perms(), "rw-p");
  EXPECT_EQ(vmas[2].path, "[stack]");

  auto space = ki.user_space(py);
  ASSERT_TRUE(space);
  PageCounts text = KernelImage::count_pages(**space, 0x400000, 0x402000, diag);
  EXPECT_EQ(text.in_image, 1u);
  EXPECT_EQ(text.not_present, 1u);
  PageCounts heap = KernelImage::count_pages(**space, 0x600000, 0x603000, diag);
  EXPECT_EQ(heap.in_image, 2u);
  EXPECT_EQ(heap.swapped, 1u);

  auto p = ki.process_image(py, diag);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->facts.pid, 4242);
  EXPECT_EQ(p->facts.command, "python3");
  EXPECT_EQ(p->facts.args, "python3 victim.py");
  EXPECT_EQ(p->facts.threads, 3u);
  EXPECT_EQ(p->facts.image_bytes, 4u * 4096);
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
  k->mem.put64(k->pa_of(k->sym("phys_base")), 0x1000000);
  auto img = open();
  ASSERT_FALSE(img);
  EXPECT_NE(img.error().to_string().find("phys_base"), std::string::npos) << img.error().to_string();
}

TEST_P(KernelTasks, ALoopingTaskListStopsWithAWarning) {
  const uint64_t t = k->off("task_struct", "tasks");
  k->put64(scene.kthreadd + t, scene.systemd + t);  // kthreadd -> systemd again
  auto img = open();
  ASSERT_TRUE(img) << img.error().to_string();
  Diagnostics diag;
  EXPECT_EQ((*img)->tasks(diag).size(), 3u);
  ASSERT_FALSE(diag.warnings().empty());
  EXPECT_NE(diag.warnings().back().find("loops"), std::string::npos) << diag.warnings().back();
}

TEST_P(KernelTasks, VmasThatDisagreeWithTheirSlotOrMmAreSkipped) {
  k->put64(scene.vma_heap + k->off("vm_area_struct", "vm_end"), 0x604000);  // not its slot's range
  k->put64(scene.vma_stack + k->off("vm_area_struct", "vm_mm"), scene.mm + 64);  // another mm's
  auto img = open();
  ASSERT_TRUE(img);
  Diagnostics diag;
  auto tasks = (*img)->tasks(diag);
  ASSERT_EQ(tasks.size(), 4u);
  const std::vector<Vma> vmas = (*img)->vmas(tasks[3], diag);
  ASSERT_EQ(vmas.size(), 1u);
  EXPECT_EQ(vmas[0].path, "/usr/bin/python3");
  EXPECT_EQ(diag.warnings().size(), 2u);
}

TEST_P(KernelTasks, ADeadMapleNodeIsSkipped) {
  // The second leaf's parent pointer names the leaf itself: the kernel's mark of a freed node.
  k->put64(scene.leaf2 & ~255ull, (scene.leaf2 & ~255ull) | 1);  // its parent is itself: a dead node
  auto img = open();
  ASSERT_TRUE(img);
  Diagnostics diag;
  auto tasks = (*img)->tasks(diag);
  const std::vector<Vma> vmas = (*img)->vmas(tasks[3], diag);
  EXPECT_EQ(vmas.size(), 1u);
  ASSERT_FALSE(diag.warnings().empty());
  EXPECT_NE(diag.warnings()[0].find("dead"), std::string::npos) << diag.warnings()[0];
}

INSTANTIATE_TEST_SUITE_P(Levels, KernelTasks, ::testing::Values(4, 5),
                         [](const auto& info) { return std::to_string(info.param) + "level"; });

}  // namespace
}  // namespace mlfx::kernel
