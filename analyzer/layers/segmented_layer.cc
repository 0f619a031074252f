#include "layers/segmented_layer.h"

#include <algorithm>

namespace mlfx::layers {

Result<std::unique_ptr<SegmentedLayer>> SegmentedLayer::create(std::string name,
                                                               std::shared_ptr<const Layer> base,
                                                               std::vector<Segment> segments) {
  std::unique_ptr<SegmentedLayer> l(new SegmentedLayer);
  MLFX_TRY(l->init(std::move(name), std::move(base), std::move(segments)));
  return l;
}

Status SegmentedLayer::init(std::string name, std::shared_ptr<const Layer> base,
                            std::vector<Segment> segments) {
  name_ = std::move(name);
  base_ = std::move(base);
  segments.erase(std::remove_if(segments.begin(), segments.end(), [](const Segment& s) { return s.size == 0; }),
                 segments.end());
  std::sort(segments.begin(), segments.end(), [](auto& a, auto& b) { return a.start < b.start; });
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    if (s.start + s.size < s.start)
      return fail(Error(Errc::kBadFormat, "segment wraps around").at({name_, s.start, std::nullopt}));
    if (i > 0 && segments[i - 1].start + segments[i - 1].size > s.start)
      return fail(Error(Errc::kBadFormat, "segments overlap").at({name_, s.start, std::nullopt}));
    if (!base_->is_mapped(s.base_offset, s.size))
      return fail(Error(Errc::kBadFormat, "segment lies beyond the end of " + base_->name() + " (truncated?)")
                      .at({name_, s.start, s.base_offset}));
  }
  segments_ = std::move(segments);
  return {};
}

const Segment* SegmentedLayer::find(uint64_t addr) const {
  if (last_ && addr >= last_->start && addr - last_->start < last_->size) return last_;
  auto it = std::upper_bound(segments_.begin(), segments_.end(), addr,
                             [](uint64_t a, const Segment& s) { return a < s.start; });
  if (it == segments_.begin()) return nullptr;
  --it;
  if (addr - it->start >= it->size) return nullptr;
  last_ = &*it;
  return last_;
}

const uint8_t* SegmentedLayer::view(uint64_t addr, uint64_t len) const {
  const Segment* s = find(addr);
  if (!s || len > s->size - (addr - s->start)) return nullptr;
  return base_->view(s->base_offset + (addr - s->start), len);
}

std::optional<FilePlace> SegmentedLayer::file_place(uint64_t addr, uint64_t len) const {
  const Segment* s = find(addr);
  if (!s || len > s->size - (addr - s->start)) return std::nullopt;
  return base_->file_place(s->base_offset + (addr - s->start), len);
}

uint64_t SegmentedLayer::mapped_run(uint64_t addr, uint64_t max) const {
  const Segment* s = find(addr);
  if (!s) return 0;
  return std::min(max, s->size - (addr - s->start));
}

}  // namespace mlfx::layers
