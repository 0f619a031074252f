#include "investigate/png_image.h"

#include <png.h>

#include <algorithm>
#include <csetjmp>

#include "mlfx/base/file.h"

namespace mlfx::investigate {

namespace {

void append(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), length);
}

}  // namespace

Result<std::string> encode_png(const Image& image) {
  if (image.width == 0 || image.height == 0 || (image.channels != 1 && image.channels != 3) ||
      image.pixels.size() != size_t{image.width} * image.height * image.channels)
    return fail(Errc::kInvalidArgument, "encode_png: inconsistent image");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    return fail(Errc::kIo, "libpng: out of memory");
  }
  std::string out;
  std::vector<png_bytep> rows(image.height);
  for (uint32_t y = 0; y < image.height; ++y)
    rows[y] = const_cast<png_bytep>(image.pixels.data() + size_t{y} * image.width * image.channels);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return fail(Errc::kIo, "libpng failed to encode the image");
  }
  png_set_write_fn(png, &out, append, nullptr);
  png_set_IHDR(png, info, image.width, image.height, 8, image.channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

Status write_png(const std::string& path, const Image& image) {
  MLFX_ASSIGN(std::string bytes, encode_png(image));
  return write_new_file(path, bytes, 0640);
}

Image enlarge(const Image& image, uint32_t factor) {
  Image out{image.width * factor, image.height * factor, image.channels, {}};
  out.pixels.resize(size_t{out.width} * out.height * out.channels);
  for (uint32_t y = 0; y < out.height; ++y)
    for (uint32_t x = 0; x < out.width; ++x)
      for (uint32_t c = 0; c < image.channels; ++c)
        out.pixels[(size_t{y} * out.width + x) * out.channels + c] =
            image.pixels[(size_t{y / factor} * image.width + x / factor) * image.channels + c];
  return out;
}

void heat_color(double v, uint8_t rgb[3]) {
  v = std::clamp(v, 0.0, 1.0);
  rgb[0] = 255;
  rgb[1] = static_cast<uint8_t>(255 * (1 - v));
  rgb[2] = static_cast<uint8_t>(255 * (1 - v) * (1 - v));
}

}  // namespace mlfx::investigate
