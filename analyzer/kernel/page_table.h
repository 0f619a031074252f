// An x86-64 virtual address space over a physical layer, given the physical address of its
// top page table (CR3, init_top_pgt or a process's mm->pgd): 4-level (48-bit) or 5-level
// (57-bit) paging, 1 GiB and 2 MiB pages, the kernel's non-present encodings (swap entries,
// PROT_NONE pages). A byte is readable only when its page is present and the image holds its
// frame: pages that were swapped out, never touched, or whose frame (or page table) lies
// outside the image are reported by translate() as such, never read as zeros.
//
// Not handled: AMD SME/SEV memory encryption (the C-bit in entries is taken as an address
// bit, so such frames are "not in the image"), and the arm64 formats.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "layers/layer.h"

namespace mlfx::kernel {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kPteAddressMask = 0x000ffffffffff000ull;  // bits 12-51
inline constexpr uint64_t kPtePresent = 1ull << 0;
inline constexpr uint64_t kPteLarge = 1ull << 7;     // PS: a 2 MiB (PMD) or 1 GiB (PUD) page
inline constexpr uint64_t kPteProtNone = 1ull << 8;  // _PAGE_PROTNONE, on non-present entries only

enum class PageState {
  kPresent,          // mapped; the frame may still lie outside the image (check the physical layer)
  kNotPresent,       // no mapping (never touched, or a file page not in memory)
  kSwapped,          // a swap entry (or another kernel swap-format entry: migration, hwpoison, marker)
  kTableNotInImage,  // a page table on the way lies outside the image: nothing can be said
};
const char* page_state_name(PageState s);

struct Translation {
  PageState state = PageState::kNotPresent;
  uint64_t vstart = 0;    // first virtual address the answer covers (aligned to `size`)
  uint64_t size = 0;      // the page (4 KiB, 2 MiB, 1 GiB), or the unmapped region the entry covers
  uint64_t physical = 0;  // kPresent: the frame of vstart; kTableNotInImage: the entry's address
  uint64_t entry = 0;     // the raw entry where the walk ended
  int level = 0;          // 1 PTE, 2 PMD, 3 PUD, 4 P4D/PML4, 5 PGD
  uint32_t swap_type = 0;    // kSwapped: x86-64 swap entry, type in bits 59-63
  uint64_t swap_offset = 0;  //   and the inverted offset in bits 9-58 (L1TF mitigation)
  bool prot_none = false;    // present but mapped PROT_NONE (its frame number is stored inverted)
  uint64_t physical_of(uint64_t vaddr) const { return physical + (vaddr - vstart); }
};

// x86-64 swap entry (arch/x86/include/asm/pgtable_64.h, since 4.18).
inline uint32_t swap_type_of(uint64_t entry) { return static_cast<uint32_t>(entry >> 59); }
inline uint64_t swap_offset_of(uint64_t entry) { return (~entry << 5) >> 14; }
inline uint64_t make_swap_entry(uint32_t type, uint64_t offset) {
  return (~offset << 14 >> 5) | (uint64_t{type} << 59);
}

class PageTableLayer : public layers::Layer {
 public:
  // `root`: physical address of the top table (low 12 bits ignored); `levels`: 4 or 5;
  // addresses at or above `limit` are not mapped (a process's user half).
  static Result<std::unique_ptr<PageTableLayer>> create(std::string name, std::shared_ptr<const layers::Layer> physical,
                                                        uint64_t root, int levels, uint64_t limit = ~0ull);

  // Where vaddr leads. Errors only for a non-canonical address.
  Result<Translation> translate(uint64_t vaddr) const;

  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override;
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override;
  std::optional<FilePlace> file_place(uint64_t addr, uint64_t len) const override;

  int levels() const { return levels_; }
  uint64_t root() const { return root_; }
  uint64_t limit() const { return limit_; }
  const layers::Layer& physical() const { return *physical_; }
  // The lowest address of the upper (kernel) half: 2^47 or 2^56 below the sign extension.
  static uint64_t user_top(int levels) { return uint64_t{1} << (levels == 5 ? 56 : 47); }

 private:
  PageTableLayer() = default;
  bool canonical(uint64_t vaddr) const;
  Translation walk(uint64_t vaddr) const;
  // The physical address of vaddr and how many bytes from it are contiguous in both spaces
  // and readable in one view of the physical layer; 0 when vaddr is not readable.
  uint64_t physical_run(uint64_t vaddr, uint64_t max, uint64_t& phys) const;

  std::string name_;
  std::shared_ptr<const layers::Layer> physical_;
  uint64_t root_ = 0, limit_ = 0;
  int levels_ = 4;
  // A small cache of present 4 KiB translations (virtual page -> frame); frontends read
  // many small objects on the same pages. Guarded: exports may read on another thread.
  struct CacheEntry {
    uint64_t vpage = ~0ull, frame = 0;
  };
  mutable std::mutex cache_mutex_;
  mutable std::array<CacheEntry, 256> cache_{};
};

}  // namespace mlfx::kernel
