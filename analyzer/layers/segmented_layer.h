// A layer made of sorted, non-overlapping segments, each backed by a run of a base layer
// (Volatility's SegmentedLayer). Format layers only parse their headers into segments.
#pragma once

#include <memory>
#include <vector>

#include "layers/layer.h"

namespace mlfx::layers {

struct Segment {
  uint64_t start = 0;        // address in this layer
  uint64_t size = 0;         // bytes present (backed by the base layer)
  uint64_t base_offset = 0;  // where they are in the base layer
};

class SegmentedLayer : public Layer {
 public:
  // Segments may come in any order; they are sorted, and overlaps are refused.
  static Result<std::unique_ptr<SegmentedLayer>> create(std::string name, std::shared_ptr<const Layer> base,
                                                        std::vector<Segment> segments);

  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override;
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override;
  std::optional<FilePlace> file_place(uint64_t addr, uint64_t len) const override;
  const std::vector<Segment>& segments() const { return segments_; }

 protected:
  SegmentedLayer() = default;
  Status init(std::string name, std::shared_ptr<const Layer> base, std::vector<Segment> segments);

 private:
  const Segment* find(uint64_t addr) const;
  std::string name_;
  std::shared_ptr<const Layer> base_;
  std::vector<Segment> segments_;
  mutable const Segment* last_ = nullptr;  // lookups cluster; not thread-safe
};

}  // namespace mlfx::layers
