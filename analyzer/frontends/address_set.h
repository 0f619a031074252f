// A set of non-zero addresses for walks over millions of objects: open addressing in one flat
// array (no allocation per entry, unlike std::unordered_set), kept at most half full.
#pragma once

#include <cstdint>
#include <vector>

namespace mlfx::frontends {

class AddressSet {
 public:
  // False when `addr` was already there. addr must not be 0 (the empty slot).
  bool insert(uint64_t addr) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
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
  size_t slot(uint64_t addr) const { return static_cast<size_t>((addr * 0x9E3779B97F4A7C15ull) >> shift_); }
  void grow() {
    std::vector<uint64_t> old = std::move(slots_);
    slots_.assign(old.empty() ? 1024 : old.size() * 2, 0);
    mask_ = slots_.size() - 1;
    shift_ = 64 - __builtin_ctzll(slots_.size());
    size_ = 0;
    for (uint64_t a : old)
      if (a) insert(a);
  }

  std::vector<uint64_t> slots_;
  size_t mask_ = 0, size_ = 0;
  int shift_ = 64;
};

}  // namespace mlfx::frontends
