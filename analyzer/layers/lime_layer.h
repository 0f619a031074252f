// A physical address space from a LiME image (format=lime): a 32-byte header before each RAM
// range, {u32 magic 0x4C694D45, u32 version 1, u64 start, u64 end (inclusive), u8 reserved[8]},
// little-endian as the x86-64 and arm64 kernels write it. Ranges must ascend without
// overlapping, as Volatility's LimeLayer requires; what lies between them is not in the image
// (never read as zeros).
#pragma once

#include <memory>

#include "layers/segmented_layer.h"

namespace mlfx::layers {

inline constexpr uint32_t kLimeMagic = 0x4C694D45;  // "EMiL" in the file
inline constexpr uint32_t kLimeVersion = 1;
inline constexpr size_t kLimeHeaderSize = 32;
// Far more ranges than any real image has (AVML's 16 MiB blocks of 1 TiB are 65,536): a
// hostile file of tiny ranges cannot make the range table outgrow the image.
inline constexpr size_t kLimeMaxRanges = size_t{1} << 20;

class LimeLayer : public SegmentedLayer {
 public:
  // Cheap probe: does `file` start with a LiME range header?
  static bool probe(const Layer& file);
  // Reads every range header; a bad magic or version, an empty, wrapping, truncated,
  // unsorted or overlapping range is refused with its file offset and address.
  static Result<std::unique_ptr<LimeLayer>> open(std::shared_ptr<const Layer> file);

 private:
  LimeLayer() = default;
};

}  // namespace mlfx::layers
