// The LiME image format (protocol/doc/physical-capture.md, `memory`): a sequence of ranges, each
// a 32-byte header {u32 magic "EMiL", u32 version 1, u64 start, u64 end (inclusive), u8[8] 0}
// followed by end - start + 1 bytes. The agent writes it (our module's image) and checks it as
// it streams in (stock LiME's), so that a damaged stream fails the capture, not the lab.
#pragma once

#include <cstdint>
#include <vector>

#include "capture/physical/iomem.h"
#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::physical {

inline constexpr uint32_t kLimeMagic = 0x4C694D45;
inline constexpr uint32_t kLimeVersion = 1;
inline constexpr size_t kLimeHeaderSize = 32;
inline constexpr size_t kLimeMaxRanges = size_t{1} << 20;  // as the analyzer's LimeLayer

void encode_lime_header(uint8_t* out, uint64_t start, uint64_t end);

// Validates a LiME stream fed in pieces of any size: magic, version, reserved bytes, ranges
// ascending and not overlapping, no range running past the end. Errors name the stream offset.
class LimeStreamChecker {
 public:
  Status feed(ByteView data);
  // The stream ended: it must end on a range boundary and hold at least one range.
  Status finish() const;

  const std::vector<PhysRange>& ranges() const { return ranges_; }
  uint64_t stream_bytes() const { return offset_; }
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  Status header_complete();

  uint64_t offset_ = 0;         // bytes fed so far
  uint64_t data_left_ = 0;      // of the current range
  uint64_t data_bytes_ = 0;     // range bytes (without headers)
  uint8_t header_[kLimeHeaderSize]{};
  size_t header_fill_ = 0;
  std::vector<PhysRange> ranges_;
};

}  // namespace mlfx::agent::physical
