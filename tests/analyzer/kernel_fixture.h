// Synthetic physical memory and x86-64 page tables for the kernel walkers' tests: regions of
// physical address space backed by one buffer (everything else absent from the "image"), and a
// page-table builder that writes entries the way the MMU reads them (Intel SDM vol. 3, 4.5).
#pragma once

#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/segmented_layer.h"

namespace mlfx::kernel::testing {

// A Layer over an in-memory buffer: address = offset.
class BufferLayer : public layers::Layer {
 public:
  explicit BufferLayer(std::shared_ptr<const std::string> data) : data_(std::move(data)) {}
  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override {
    if (addr > data_->size() || len > data_->size() - addr) return nullptr;
    return reinterpret_cast<const uint8_t*>(data_->data()) + addr;
  }
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override {
    return addr >= data_->size() ? 0 : std::min<uint64_t>(max, data_->size() - addr);
  }

 private:
  std::string name_ = "buffer";
  std::shared_ptr<const std::string> data_;
};

class FakePhysical {
 public:
  // Adds physical [start, start+size) to the image, zero-filled.
  void add_region(uint64_t start, uint64_t size) {
    regions_.push_back({start, size, buf_->size()});
    buf_->resize(buf_->size() + size, '\0');
  }
  char* at(uint64_t pa, uint64_t len) {
    for (const auto& r : regions_)
      if (pa >= r.start && pa - r.start + len <= r.size) return buf_->data() + r.offset + (pa - r.start);
    throw std::out_of_range("physical address not in a region");
  }
  void put64(uint64_t pa, uint64_t v) { std::memcpy(at(pa, 8), &v, 8); }
  void put32(uint64_t pa, uint32_t v) { std::memcpy(at(pa, 4), &v, 4); }
  void put(uint64_t pa, const std::string& bytes) { std::memcpy(at(pa, bytes.size()), bytes.data(), bytes.size()); }
  // Bump allocation of zeroed physical memory inside the first region.
  uint64_t alloc(uint64_t size = 4096, uint64_t align = 4096) {
    next_ = (next_ + align - 1) & ~(align - 1);
    const uint64_t pa = next_;
    next_ += size;
    at(pa, size);  // throws when the region is full
    return pa;
  }
  void set_next_free(uint64_t pa) { next_ = pa; }
  std::shared_ptr<const layers::SegmentedLayer> layer() const {
    std::vector<layers::Segment> segs;
    for (const auto& r : regions_) segs.push_back({r.start, r.size, r.offset});
    auto l = layers::SegmentedLayer::create("physical", std::make_shared<BufferLayer>(buf_), segs);
    if (!l) throw std::runtime_error(l.error().to_string());
    return std::shared_ptr<const layers::SegmentedLayer>(std::move(*l));
  }

 private:
  struct Region {
    uint64_t start, size, offset;
  };
  std::shared_ptr<std::string> buf_ = std::make_shared<std::string>();
  std::vector<Region> regions_;
  uint64_t next_ = 0;
};

inline constexpr uint64_t kP = 1, kRW = 2, kUS = 4, kPS = 0x80;

// Writes 4- or 5-level page tables into FakePhysical.
class PageTables {
 public:
  PageTables(FakePhysical& m, int levels) : m_(m), levels_(levels), root_(m.alloc()) {}
  uint64_t root() const { return root_; }
  // Maps a page of `size` (4 KiB, 2 MiB, 1 GiB) at va to pa.
  void map(uint64_t va, uint64_t pa, uint64_t size = 4096, uint64_t flags = kP | kRW | kUS) {
    const int leaf = size == 4096 ? 1 : size == (2u << 20) ? 2 : 3;
    m_.put64(entry_addr(va, leaf), pa | flags | (leaf > 1 ? kPS : 0));
  }
  // Writes a raw entry at `level` for va (creating the tables above it).
  void set(uint64_t va, int level, uint64_t raw) { m_.put64(entry_addr(va, level), raw); }
  // The address of va's entry at `level`, creating tables above it as needed.
  uint64_t entry_addr(uint64_t va, int level) {
    uint64_t table = root_;
    for (int l = levels_; l > level; --l) {
      const uint64_t e = table + ((va >> (12 + 9 * (l - 1))) & 511) * 8;
      uint64_t v;
      std::memcpy(&v, m_.at(e, 8), 8);
      if (!(v & kP)) {
        v = m_.alloc() | kP | kRW | kUS;
        m_.put64(e, v);
      }
      table = v & 0x000ffffffffff000ull;
    }
    return table + ((va >> (12 + 9 * (level - 1))) & 511) * 8;
  }

 private:
  FakePhysical& m_;
  int levels_;
  uint64_t root_;
};

}  // namespace mlfx::kernel::testing
