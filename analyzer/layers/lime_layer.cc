#include "layers/lime_layer.h"

#include <vector>

#include "mlfx/base/bytes.h"

namespace mlfx::layers {
namespace {

struct RangeHeader {
  uint32_t magic, version;
  uint64_t start, end;  // physical, end inclusive
};

RangeHeader decode(const uint8_t* p) {
  return {load_le<uint32_t>(p), load_le<uint32_t>(p + 4), load_le<uint64_t>(p + 8), load_le<uint64_t>(p + 16)};
}

}  // namespace

bool LimeLayer::probe(const Layer& file) {
  const uint8_t* p = file.view(0, kLimeHeaderSize);
  return p && load_le<uint32_t>(p) == kLimeMagic;
}

Result<std::unique_ptr<LimeLayer>> LimeLayer::open(std::shared_ptr<const Layer> file) {
  const std::string& fname = file->name();
  const uint64_t size = file->mapped_run(0, UINT64_MAX);
  auto bad = [&](std::string what, uint64_t offset, std::optional<uint64_t> address = std::nullopt) {
    return fail(Error(Errc::kBadFormat, std::move(what)).at({fname, address, offset}));
  };
  if (size == 0) return fail(Errc::kBadFormat, fname + " is empty: not a LiME image");
  std::vector<Segment> segments;
  uint64_t offset = 0;
  while (offset < size) {
    const uint8_t* p = file->view(offset, kLimeHeaderSize);
    if (!p) return bad("LiME range header cut short (truncated image?)", offset);
    const RangeHeader h = decode(p);
    if (h.magic != kLimeMagic)
      return bad(offset == 0 ? "not a LiME image (no LiME magic at the start)"
                             : "no LiME magic where the next range header should be (damaged image?)",
                 offset);
    if (h.version != kLimeVersion)
      return bad("LiME header version " + std::to_string(h.version) + " (only version 1 is known)", offset);
    if (h.end < h.start) return bad("LiME range ends before it starts", offset, h.start);
    if (h.start == 0 && h.end == UINT64_MAX) return bad("LiME range covers the whole address space", offset, h.start);
    const uint64_t length = h.end - h.start + 1;
    const uint64_t data = offset + kLimeHeaderSize;
    if (length > size - data)
      return bad("LiME range of " + std::to_string(length) + " bytes runs past the end of the image (truncated?)",
                 offset, h.start);
    if (!segments.empty() && h.start < segments.back().start + segments.back().size)
      return bad("LiME ranges are unsorted or overlap: " + hex_address(h.start) + " comes after the range ending at " +
                     hex_address(segments.back().start + segments.back().size - 1),
                 offset, h.start);
    if (segments.size() == kLimeMaxRanges)
      return bad("more than " + std::to_string(kLimeMaxRanges) + " LiME ranges", offset, h.start);
    segments.push_back({h.start, length, data});
    offset = data + length;
  }
  std::unique_ptr<LimeLayer> layer(new LimeLayer);
  MLFX_TRY(layer->init(fname + " (LiME)", std::move(file), std::move(segments)));
  return layer;
}

}  // namespace mlfx::layers
