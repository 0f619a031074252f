// A set of non-zero addresses for walks over millions of objects: open addressing in one flat
// array (no allocation per entry, unlike std::unordered_set), kept at most half full.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace mlfx::frontends {

class AddressSet {
 public:
  // False when `addr` was already there. addr must not be 0 (the empty slot).
  bool insert(uint64_t addr) {
    if ((size_ + 1) * 2 > capacity_) grow();
    for (size_t i = slot(addr);; i = (i + 1) & mask_) {
      if (slots_[i] == addr) return false;
      if (slots_[i] == 0) {
        slots_[i] = addr;
        ++size_;
        return true;
      }
    }
  }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(uint64_t* p) const { std::free(p); }
  };
  using Slots = std::unique_ptr<uint64_t[], Free>;
  static constexpr size_t kHugePage = 2u << 20;

  // A zeroed table. Large ones sit on huge pages: every first touch of a 4 KiB page is a page
  // fault, and the walk of 100k objects took 1,000 of them for this table alone.
  static Slots zeroed(size_t count) {
    const size_t bytes = count * sizeof(uint64_t);
    const size_t align = bytes >= kHugePage / 8 ? kHugePage : alignof(uint64_t);
    void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    if (!p) throw std::bad_alloc();
    if (align == kHugePage) (void)madvise(p, bytes, MADV_HUGEPAGE);  // a hint
    std::memset(p, 0, bytes);
    return Slots(static_cast<uint64_t*>(p));
  }
  size_t slot(uint64_t addr) const { return static_cast<size_t>((addr * 0x9E3779B97F4A7C15ull) >> shift_); }
  void grow() {
    Slots old = std::move(slots_);
    const size_t old_capacity = capacity_;
    capacity_ = old_capacity ? old_capacity * 2 : 1024;
    slots_ = zeroed(capacity_);
    mask_ = capacity_ - 1;
    shift_ = 64 - __builtin_ctzll(capacity_);
    size_ = 0;
    for (size_t i = 0; i < old_capacity; ++i)
      if (old[i]) insert(old[i]);
  }

  Slots slots_;
  size_t capacity_ = 0, mask_ = 0, size_ = 0;
  int shift_ = 64;
};

}  // namespace mlfx::frontends
