// /proc/iomem: the physical address map as a tree (indentation gives the depth), and the RAM in
// it. Stock LiME 1.9.1 dumps only the top-level entries named exactly "System RAM"; the RAM it
// cannot see (hot-plugged "System RAM (virtio_mem)", dax "System RAM (kmem)", nested under a
// non-RAM parent) is computed here so that the context can say what the image lacks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::physical {

struct IomemEntry {
  uint64_t start = 0, end = 0;  // inclusive, as the kernel prints them
  std::string name;
  uint32_t depth = 0;  // 0: child of the iomem root
};

// An inclusive physical range.
struct PhysRange {
  uint64_t start = 0, end = 0;
  uint64_t size() const { return end - start + 1; }
  bool operator==(const PhysRange&) const = default;
};

// Strict: a malformed line, or a depth that jumps by more than one, fails with its line number.
// All-zero addresses (what a reader without CAP_SYS_ADMIN sees) are refused: the map is useless.
Result<std::vector<IomemEntry>> parse_iomem(std::string_view text);
Result<std::vector<IomemEntry>> read_iomem();

// Whether an entry is RAM the kernel manages: "System RAM" and its variants
// ("System RAM (kmem)", "System RAM (virtio_mem)").
bool is_system_ram(const IomemEntry& e);

// Every System RAM range at any depth, sorted, overlaps and adjacencies merged: what a complete
// image holds.
std::vector<PhysRange> all_system_ram(const std::vector<IomemEntry>& tree);
// What LiME 1.9.1 dumps: the top-level entries named exactly "System RAM", in tree order.
std::vector<PhysRange> lime_1_9_1_ranges(const std::vector<IomemEntry>& tree);
// The parts of `wanted` that no range of `have` covers (both sorted, non-overlapping).
std::vector<PhysRange> subtract(const std::vector<PhysRange>& wanted, const std::vector<PhysRange>& have);

json::Json iomem_json(const std::vector<IomemEntry>& tree);
json::Json ranges_json(const std::vector<PhysRange>& ranges);

}  // namespace mlfx::agent::physical
