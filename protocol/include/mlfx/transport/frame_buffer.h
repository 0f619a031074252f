// The storage a frame's body is read into. A RECORD's unit is placed at a memory address
// congruent to its file offset modulo kIoAlignment, so that a receiver can write the aligned
// middle of the unit to its file with direct I/O straight from this buffer. Move-only; a
// receiver may take the storage of a frame it keeps (and give another one back).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace mlfx::transport {

inline constexpr size_t kIoAlignment = 4096;

class FrameBuffer {
 public:
  FrameBuffer() = default;

  uint8_t* data() const { return data_.get(); }
  size_t capacity() const { return capacity_; }
  // Room for `size` bytes; the contents are not kept when the buffer grows.
  void reserve(size_t size) {
    if (size <= capacity_) return;
    const size_t rounded = (size + kIoAlignment - 1) / kIoAlignment * kIoAlignment;
    void* p = std::aligned_alloc(kIoAlignment, rounded);
    if (!p) throw std::bad_alloc();
    data_.reset(static_cast<uint8_t*>(p));
    capacity_ = rounded;
  }
  void release() {
    data_.reset();
    capacity_ = 0;
  }
  // Where a unit at `file_offset` starts in the buffer (its 8-byte offset field just before
  // it), and the room a unit of `size` bytes needs there.
  static size_t unit_start(uint64_t file_offset) { return kIoAlignment + file_offset % kIoAlignment; }
  static size_t room_for_unit(uint64_t file_offset, size_t size) { return unit_start(file_offset) + size; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
  size_t capacity_ = 0;
};

}  // namespace mlfx::transport
