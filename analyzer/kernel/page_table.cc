#include "kernel/page_table.h"

#include <algorithm>

namespace mlfx::kernel {
namespace {

constexpr int shift_of(int level) { return 12 + 9 * (level - 1); }  // bytes an entry of `level` maps: 1 << shift
constexpr uint64_t kMaxRunPages = 512;  // pages one mapped_run looks at for physical contiguity

uint64_t align_down(uint64_t v, uint64_t size) { return v & ~(size - 1); }

}  // namespace

const char* page_state_name(PageState s) {
  switch (s) {
    case PageState::kPresent: return "present";
    case PageState::kNotPresent: return "not present";
    case PageState::kSwapped: return "swapped";
    case PageState::kTableNotInImage: return "page table not in image";
  }
  return "?";
}

Result<std::unique_ptr<PageTableLayer>> PageTableLayer::create(std::string name,
                                                               std::shared_ptr<const layers::Layer> physical,
                                                               uint64_t root, int levels, uint64_t limit) {
  if (levels != 4 && levels != 5)
    return fail(Errc::kInvalidArgument, "x86-64 paging has 4 or 5 levels, not " + std::to_string(levels));
  if (!physical) return fail(Errc::kInvalidArgument, "a page-table layer needs a physical layer");
  std::unique_ptr<PageTableLayer> l(new PageTableLayer);
  l->name_ = std::move(name);
  l->physical_ = std::move(physical);
  l->root_ = root & kPteAddressMask;
  l->levels_ = levels;
  l->limit_ = limit;
  return l;
}

bool PageTableLayer::canonical(uint64_t vaddr) const {
  const int bits = levels_ == 5 ? 57 : 48;
  const uint64_t upper = vaddr >> (bits - 1);  // the top bit of the address and everything above it
  return upper == 0 || upper == (~0ull >> (bits - 1));
}

Result<Translation> PageTableLayer::translate(uint64_t vaddr) const {
  if (!canonical(vaddr))
    return fail(Error(Errc::kInvalidAddress, "non-canonical address for " + std::to_string(levels_) + "-level paging")
                    .at({name_, vaddr, std::nullopt}));
  return walk(vaddr);
}

Translation PageTableLayer::walk(uint64_t vaddr) const {
  Translation t;
  uint64_t table = root_;
  for (int level = levels_; level >= 1; --level) {
    const int shift = shift_of(level);
    const uint64_t entry_addr = table + ((vaddr >> shift) & 511) * 8;
    t.level = level;
    t.size = uint64_t{1} << shift;
    t.vstart = align_down(vaddr, t.size);
    auto entry = physical_->read_u64(entry_addr);
    if (!entry) {
      t.state = PageState::kTableNotInImage;
      t.physical = entry_addr;
      return t;
    }
    const uint64_t e = t.entry = *entry;
    if (!(e & kPtePresent)) {
      const bool leaf_level = level == 1 || (level == 2 && (e & kPteLarge));
      if (e != 0 && (e & kPteProtNone) && leaf_level) {
        // PROT_NONE: present to the kernel, hidden from the MMU; the frame number is inverted.
        t.state = PageState::kPresent;
        t.prot_none = true;
        t.physical = ~e & kPteAddressMask & ~(t.size - 1);
      } else if (e != 0 && level <= 2) {
        t.state = PageState::kSwapped;
        t.swap_type = swap_type_of(e);
        t.swap_offset = swap_offset_of(e);
      } else {
        t.state = PageState::kNotPresent;
      }
      return t;
    }
    if (level == 1 || ((level == 2 || level == 3) && (e & kPteLarge))) {
      t.state = PageState::kPresent;
      t.physical = e & kPteAddressMask & ~(t.size - 1);  // for large pages bit 12 is PAT, not address
      return t;
    }
    table = e & kPteAddressMask;
  }
  return t;  // not reached: level 1 always returns
}

uint64_t PageTableLayer::physical_run(uint64_t vaddr, uint64_t max, uint64_t& phys) const {
  if (max == 0 || vaddr >= limit_ || !canonical(vaddr)) return 0;
  max = std::min(max, limit_ - vaddr);
  // The frame of each 4 KiB page, from the cache or a walk.
  auto frame_of = [&](uint64_t va, uint64_t& frame, uint64_t& span) -> bool {
    const uint64_t vpage = va >> 12;
    CacheEntry& c = cache_[vpage & (cache_.size() - 1)];
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (c.vpage == vpage) {
        frame = c.frame;
        span = kPageSize;
        return true;
      }
    }
    if (!canonical(va)) return false;
    Translation t = walk(va);
    if (t.state != PageState::kPresent) return false;
    frame = t.physical_of(align_down(va, kPageSize));
    span = t.vstart + t.size - align_down(va, kPageSize);  // to the end of a large page
    std::lock_guard<std::mutex> lock(cache_mutex_);
    c = {vpage, frame};
    return true;
  };
  uint64_t frame = 0, span = 0;
  if (!frame_of(vaddr, frame, span)) return 0;
  phys = frame + (vaddr & (kPageSize - 1));
  uint64_t run = std::min(max, span - (vaddr & (kPageSize - 1)));
  for (uint64_t pages = 0; run < max && pages < kMaxRunPages; ++pages) {
    const uint64_t next_va = vaddr + run;
    if (next_va >= limit_ || next_va < vaddr) break;
    uint64_t next_frame = 0, next_span = 0;
    if (!frame_of(next_va, next_frame, next_span) || next_frame != phys + run) break;
    run = std::min(max, run + next_span);
  }
  return physical_->mapped_run(phys, run);  // the frames must be in the image, in one run of it
}

uint64_t PageTableLayer::mapped_run(uint64_t addr, uint64_t max) const {
  uint64_t phys = 0;
  return physical_run(addr, max, phys);
}

const uint8_t* PageTableLayer::view(uint64_t addr, uint64_t len) const {
  uint64_t phys = 0;
  if (len == 0 || physical_run(addr, len, phys) < len) return nullptr;
  return physical_->view(phys, len);
}

std::optional<FilePlace> PageTableLayer::file_place(uint64_t addr, uint64_t len) const {
  uint64_t phys = 0;
  if (len == 0 || physical_run(addr, len, phys) < len) return std::nullopt;
  return physical_->file_place(phys, len);
}

}  // namespace mlfx::kernel
