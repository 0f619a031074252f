// PNG files for the report's pictures (reversed triggers, change heat maps), through libpng.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx::investigate {

struct Image {
  uint32_t width = 0, height = 0;
  uint32_t channels = 3;        // 1 (gray) or 3 (RGB)
  std::vector<uint8_t> pixels;  // row-major, interleaved channels
};

// Encodes `image` as PNG bytes.
Result<std::string> encode_png(const Image& image);
// Writes a new PNG file (never replacing one).
Status write_png(const std::string& path, const Image& image);
// Nearest-neighbour enlargement by an integer factor, so that a 16x16 trigger is visible.
Image enlarge(const Image& image, uint32_t factor);
// A value in [0, 1] on a white-to-red scale (heat maps).
void heat_color(double v, uint8_t rgb[3]);

}  // namespace mlfx::investigate
