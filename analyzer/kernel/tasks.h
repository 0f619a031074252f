// Linux processes in a physical image, from the captured BTF and kallsyms alone: init_task's
// `tasks` list (thread-group leaders), each task's mm, its VMAs (the maple tree mm->mm_mt of
// 6.1 and later, or the mm->mmap list of older kernels, whichever the BTF shows), and its user
// address space through its own page tables (mm->pgd). Every structure is laid out from BTF.
//
// Memory is hostile: lists and trees are walked with cycle checks and bounds, each VMA must
// agree with the tree slot that holds it (its range and its vm_mm), and what cannot be read is
// reported (Diagnostics warnings) and the walk goes on or stops; nothing is guessed.
//
// File paths are rebuilt like d_path(): dentry names up to the mount's root, then across
// mounts (struct mount's mnt_mountpoint, mnt_parent) to the root of the mount namespace of the
// mount itself. They are approximate where d_path() is not a dentry walk: a chroot, a process
// in another mount namespace (its paths are those of its own namespace's root), d_dname
// pseudo files (pipes, sockets, anon inodes: their dentry name is shown). A file whose dentry
// is unhashed is marked " (deleted)" like /proc/PID/maps.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/diagnostics.h"
#include "kernel/btf.h"
#include "kernel/kernel_space.h"
#include "layers/process_image.h"

namespace mlfx::kernel {

struct MapleWalk;  // tasks.cc

inline constexpr size_t kMaxTasks = size_t{1} << 22;      // PID_MAX_LIMIT
inline constexpr size_t kMaxVmas = size_t{1} << 20;       // far above vm.max_map_count (65,530)
inline constexpr size_t kMaxMapleNodes = size_t{1} << 20;
inline constexpr size_t kMaxPathComponents = 256;
inline constexpr size_t kMaxPathBytes = 4096;             // PATH_MAX

// How the pages of a virtual range fared, in 4 KiB pages.
struct PageCounts {
  uint64_t in_image = 0;      // present, and the image holds the frame
  uint64_t not_in_image = 0;  // present, but the frame lies outside the image
  uint64_t swapped = 0;       // swap entries (and the kernel's other swap-format entries)
  uint64_t not_present = 0;   // never touched, or a file page not in memory
  uint64_t unknown = 0;       // a page table on the way is outside the image
  PageCounts& operator+=(const PageCounts& o);
  uint64_t total() const { return in_image + not_in_image + swapped + not_present + unknown; }
};

struct Vma {
  uint64_t address = 0;  // the vm_area_struct
  uint64_t start = 0, end = 0, flags = 0, pgoff = 0;
  uint64_t file = 0;     // struct file *, 0 for anonymous memory
  std::string path;      // the file's path, or [heap], [stack], [vdso], [vvar]; empty for other anonymous memory
  std::string perms() const;  // "r-xp", as /proc/PID/maps (s: VM_MAYSHARE)
};

struct Task {
  uint64_t address = 0;  // the task_struct
  int32_t pid = 0, tgid = 0;
  int32_t ppid = -1;     // -1: unknown
  int64_t uid = -1;      // real uid; -1: unknown
  int64_t threads = -1;  // signal->nr_threads; -1: unknown
  uint32_t flags = 0;    // PF_*
  std::string comm;
  uint64_t mm = 0;       // 0: a kernel thread (no user address space)
  uint64_t pgd = 0;      // mm->pgd, a kernel virtual address
  uint64_t pgd_physical = 0;  // 0 when it cannot be translated
};

class KernelImage {
 public:
  // Parses kallsyms and BTF, locates the kernel's address space (kernel_space.h) and lays out
  // the structures the walks read; a BTF without them is refused, naming what is missing.
  static Result<std::unique_ptr<KernelImage>> open(std::shared_ptr<const layers::SegmentedLayer> physical,
                                                   std::string_view kallsyms, std::string_view btf,
                                                   std::string_view banner);

  const KernelSpace& space() const { return space_; }
  const Btf& btf() const { return btf_; }
  // How the kernel was found and which structures the BTF gave, for reports.
  std::vector<std::string> notes() const;

  // Every task on init_task's list, init_task (pid 0) first. A list that breaks or loops is
  // reported in diag and what was found before is returned.
  std::vector<Task> tasks(Diagnostics& diag) const;
  // The task's VMAs in address order (empty for kernel threads); damage goes to diag.
  std::vector<Vma> vmas(const Task& task, Diagnostics& diag) const;
  // The task's user address space: its page tables over the physical image, the lower half only.
  Result<std::shared_ptr<const PageTableLayer>> user_space(const Task& task) const;
  // Pages of [start, end) in `space`, by state.
  // `declared`, when given, gets the ranges the page tables speak for (every page that is not
  // simply absent: present, swapped, or behind a table outside the image), in order.
  static PageCounts count_pages(const PageTableLayer& space, uint64_t start, uint64_t end, Diagnostics& diag,
                                std::vector<layers::AddressRange>* declared = nullptr);
  // The task as the recovery engine sees a process: its user address space, its file
  // mappings, and facts (pid, comm, command line read from its stack, threads).
  Result<layers::ProcessImage> process_image(const Task& task, Diagnostics& diag) const;

  struct Layout;  // byte offsets from BTF (tasks.cc)

 private:
  KernelImage() = default;
  Result<Task> read_task(uint64_t address) const;
  void maple_walk(uint64_t enode, uint64_t min, uint64_t max, int depth, MapleWalk& walk) const;
  std::vector<Vma> vmas_from_list(const Task& task, Diagnostics& diag) const;
  std::vector<Vma> vmas_from_maple_tree(const Task& task, Diagnostics& diag) const;
  Result<Vma> read_vma(uint64_t address, const Task& task) const;
  Result<std::string> file_path(uint64_t file) const;
  void label_anonymous(const Task& task, std::vector<Vma>& vmas) const;

  Btf btf_;
  Kallsyms symbols_;
  KernelSpace space_;
  std::shared_ptr<const Layout> layout_;
  uint64_t init_task_ = 0;
};

}  // namespace mlfx::kernel
