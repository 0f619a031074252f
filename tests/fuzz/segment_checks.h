// Invariants of a SegmentedLayer that any format layer must keep (ELF cores, LiME images,
// processes rebuilt from a pagemap): segments sorted, disjoint, not empty and fully readable,
// and view()/read()/mapped_run()/is_mapped() agreeing with them at every boundary.
#pragma once

#include <algorithm>
#include <string>

#include "fuzz_support.h"
#include "layers/segmented_layer.h"

namespace mlfx::fuzz {

inline void check_segments(const layers::SegmentedLayer& core) {
  const auto& segs = core.segments();
  uint8_t buf[64];
  for (size_t i = 0; i < segs.size(); ++i) {
    const layers::Segment& s = segs[i];
    const std::string where = "segment " + std::to_string(i) + " at " + std::to_string(s.start);
    if (s.size == 0) invariant_failed("segments are not empty", where);
    if (i > 0 && segs[i - 1].start + segs[i - 1].size > s.start)
      invariant_failed("segments are sorted and disjoint", where);
    const uint64_t last = s.start + s.size - 1;
    if (core.mapped_run(s.start, UINT64_MAX) < s.size || core.mapped_run(last, UINT64_MAX) < 1)
      invariant_failed("mapped_run covers a segment", where);
    if (!core.view(s.start, s.size) || !core.view(last, 1) || !core.is_mapped(s.start, s.size))
      invariant_failed("a whole segment can be viewed", where);
    if (!core.read(s.start, buf, std::min<uint64_t>(s.size, sizeof buf)) || !core.read(last, buf, 1))
      invariant_failed("a segment can be read", where);
    if (core.view(s.start, s.size + 1) && !(i + 1 < segs.size() && segs[i + 1].start == s.start + s.size))
      invariant_failed("view() stops at the end of a segment", where);
    // Across the boundaries: one byte before and after, and a read spanning the end.
    const bool before = s.start > 0 && core.is_mapped(s.start - 1, 1);
    const bool after = last + 1 != 0 && core.is_mapped(last + 1, 1);
    if (s.start > 0) (void)core.read(s.start - 1, buf, 2);
    if (core.read(last, buf, 2).has_value() != after)
      invariant_failed("a read past a segment's end succeeds only into the next segment", where);
    if (i == 0 && before) invariant_failed("nothing is mapped below the first segment", where);
    (void)core.read_cstring(s.start, 64);
  }
  (void)core.read(UINT64_MAX - 1, buf, 4);  // wraps around
}

}  // namespace mlfx::fuzz
