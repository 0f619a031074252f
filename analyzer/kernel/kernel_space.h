// The x86-64 kernel's own address space in a physical image, found from kallsyms and the
// kernel banner alone (no symbol table, no CR3 from the capture):
//
//  1. phys_base: the kernel image is mapped at __START_KERNEL_map (0xffffffff80000000), so a
//     symbol's physical address is `vaddr - __START_KERNEL_map + phys_base`, with phys_base a
//     multiple of CONFIG_PHYSICAL_ALIGN (2 MiB at least). Every candidate that puts
//     linux_banner's address on the banner text recorded at capture is tried; the kernel's own
//     `phys_base` variable, where kallsyms has it, must hold the same value.
//  2. The paging depth: the kernel's __pgtable_l5_enabled where it exists, else the direct
//     map's base (page_offset_base: below 0xffff800000000000 only with 5 levels).
//  3. The root: init_top_pgt (x86-64's swapper_pg_dir). Walking linux_banner's address through
//     it must lead to the same physical banner, which checks depth and root together.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernel/kallsyms.h"
#include "kernel/page_table.h"
#include "layers/segmented_layer.h"

namespace mlfx::kernel {

inline constexpr uint64_t kStartKernelMap = 0xffffffff80000000ull;
inline constexpr uint64_t kPhysicalAlign = uint64_t{2} << 20;

class KernelSpace {
 public:
  // `banner`: the kernel's "Linux version ..." line as recorded at capture (/proc/version);
  // it must occur at linux_banner. An empty banner is refused: without it any "Linux version"
  // text in memory could be taken for the kernel's.
  static Result<KernelSpace> locate(std::shared_ptr<const layers::SegmentedLayer> physical, const Kallsyms& symbols,
                                    std::string_view banner);

  uint64_t phys_base() const { return phys_base_; }
  int levels() const { return kernel_->levels(); }
  uint64_t root() const { return kernel_->root(); }  // physical address of init_top_pgt
  uint64_t page_offset_base() const { return page_offset_base_; }  // 0 when kallsyms lacks it
  // The kernel's virtual address space (every address the kernel maps).
  const PageTableLayer& kernel() const { return *kernel_; }
  const std::shared_ptr<const PageTableLayer>& kernel_layer() const { return kernel_; }
  const std::shared_ptr<const layers::SegmentedLayer>& physical() const { return physical_; }
  // __pa_symbol(): an address in the kernel image to its physical address.
  uint64_t image_to_physical(uint64_t vaddr) const { return vaddr - kStartKernelMap + phys_base_; }
  // A kernel virtual address (direct map, vmalloc, image) to physical, through the page tables.
  Result<uint64_t> to_physical(uint64_t vaddr) const;
  // How each step was decided, for reports.
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  std::shared_ptr<const layers::SegmentedLayer> physical_;
  std::shared_ptr<const PageTableLayer> kernel_;
  uint64_t phys_base_ = 0, page_offset_base_ = 0;
  std::vector<std::string> notes_;
};

}  // namespace mlfx::kernel
