// Address spaces, after Volatility's layers: every piece of evidence is a Layer that maps
// addresses onto the bytes below it. Frontends read through the top layer only and never
// know which format is underneath.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>

#include "mlfx/base/file.h"
#include "mlfx/base/result.h"

namespace mlfx::layers {

class Layer {
 public:
  virtual ~Layer() = default;
  virtual const std::string& name() const = 0;

  // A pointer to [addr, addr+len) when those bytes are present and contiguous in memory
  // (the zero-copy path over an mmap), else nullptr. Valid while the layer lives.
  virtual const uint8_t* view(uint64_t addr, uint64_t len) const = 0;
  // Copies [addr, addr+len); fails with Errc::kInvalidAddress naming the first address that
  // is not mapped. The default joins views across pieces.
  virtual Status read(uint64_t addr, void* out, uint64_t len) const;
  // Whether every byte of [addr, addr+len) can be read.
  virtual bool is_mapped(uint64_t addr, uint64_t len) const;
  // The length of the mapped run starting at addr (0 when addr is unmapped), at most `max`.
  virtual uint64_t mapped_run(uint64_t addr, uint64_t max) const = 0;
  // Where [addr, addr+len) lies as one run in an open file (the evidence under the mapping),
  // if it does: exporters copy from there without faulting the mapping in.
  virtual std::optional<FilePlace> file_place(uint64_t /*addr*/, uint64_t /*len*/) const { return std::nullopt; }

  template <class T>
  Result<T> read_value(uint64_t addr) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    if (const uint8_t* p = view(addr, sizeof(T))) {
      std::memcpy(&v, p, sizeof(T));
      return v;
    }
    MLFX_TRY(read(addr, &v, sizeof(T)));
    return v;
  }
  Result<uint64_t> read_u64(uint64_t addr) const { return read_value<uint64_t>(addr); }
  // A NUL-terminated string of at most max_len bytes; fails if unterminated within max_len.
  Result<std::string> read_cstring(uint64_t addr, size_t max_len) const;

 protected:
  Error invalid_address(uint64_t addr) const;
};

}  // namespace mlfx::layers
