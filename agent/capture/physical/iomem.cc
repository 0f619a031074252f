#include "capture/physical/iomem.h"

#include <algorithm>
#include <charconv>

#include "capture/process/procfs.h"

namespace mlfx::agent::physical {

namespace {

bool parse_hex(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 16) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  return ec == std::errc() && p == s.data() + s.size();
}

// "  00100000-bfffffff : System RAM" (kernel/resource.c r_show: two spaces per level).
Result<IomemEntry> parse_line(std::string_view line, size_t number) {
  auto bad = [&](const std::string& why) {
    return fail(Errc::kBadFormat, "/proc/iomem line " + std::to_string(number) + ": " + why + ": '" +
                                      std::string(line.substr(0, 120)) + "'");
  };
  size_t indent = line.find_first_not_of(' ');
  if (indent == std::string_view::npos) return bad("blank line");
  if (indent % 2) return bad("odd indentation");
  std::string_view rest = line.substr(indent);
  size_t dash = rest.find('-');
  size_t colon = rest.find(" : ");
  if (dash == std::string_view::npos || colon == std::string_view::npos || dash > colon)
    return bad("expected 'START-END : NAME'");
  IomemEntry e;
  if (!parse_hex(rest.substr(0, dash), e.start) || !parse_hex(rest.substr(dash + 1, colon - dash - 1), e.end))
    return bad("addresses are not hexadecimal");
  if (e.end < e.start) return bad("range ends before it starts");
  e.name = std::string(rest.substr(colon + 3));
  e.depth = static_cast<uint32_t>(indent / 2);
  return e;
}

// Sorts and merges overlapping or adjacent ranges.
std::vector<PhysRange> merged(std::vector<PhysRange> r) {
  std::sort(r.begin(), r.end(), [](const PhysRange& a, const PhysRange& b) { return a.start < b.start; });
  std::vector<PhysRange> out;
  for (const PhysRange& x : r) {
    if (!out.empty() && (x.start <= out.back().end || x.start == out.back().end + 1)) {
      out.back().end = std::max(out.back().end, x.end);
      continue;
    }
    out.push_back(x);
  }
  return out;
}

}  // namespace

Result<std::vector<IomemEntry>> parse_iomem(std::string_view text) {
  std::vector<IomemEntry> tree;
  size_t number = 0;
  bool any_address = false;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++number;
    if (line.empty() && text.empty()) break;
    MLFX_ASSIGN(IomemEntry e, parse_line(line, number));
    const uint32_t max_depth = tree.empty() ? 0 : tree.back().depth + 1;
    if (e.depth > max_depth)
      return fail(Errc::kBadFormat, "/proc/iomem line " + std::to_string(number) + ": nested " +
                                        std::to_string(e.depth - max_depth) + " levels below its parent");
    any_address = any_address || e.end != 0;
    tree.push_back(std::move(e));
  }
  if (tree.empty()) return fail(Errc::kBadFormat, "/proc/iomem is empty");
  if (!any_address)
    return fail(Errc::kPermission, "/proc/iomem shows every address as 0: reading it needs CAP_SYS_ADMIN "
                                   "(run mlfx-agent as root)");
  return tree;
}

Result<std::vector<IomemEntry>> read_iomem() {
  MLFX_ASSIGN(std::string text, process::read_proc_file("/proc/iomem", 16u << 20));
  return parse_iomem(text);
}

bool is_system_ram(const IomemEntry& e) {
  return e.name == "System RAM" || e.name.rfind("System RAM (", 0) == 0;
}

std::vector<PhysRange> all_system_ram(const std::vector<IomemEntry>& tree) {
  std::vector<PhysRange> ram;
  for (const IomemEntry& e : tree)
    if (is_system_ram(e)) ram.push_back({e.start, e.end});
  return merged(std::move(ram));
}

std::vector<PhysRange> lime_1_9_1_ranges(const std::vector<IomemEntry>& tree) {
  std::vector<PhysRange> out;
  for (const IomemEntry& e : tree)
    if (e.depth == 0 && e.name == "System RAM") out.push_back({e.start, e.end});
  return out;
}

std::vector<PhysRange> subtract(const std::vector<PhysRange>& wanted, const std::vector<PhysRange>& have) {
  std::vector<PhysRange> out;
  for (PhysRange w : wanted) {
    uint64_t cur = w.start;
    bool done = false;
    for (const PhysRange& h : have) {
      if (h.end < cur || h.start > w.end) continue;
      if (h.start > cur) out.push_back({cur, h.start - 1});
      if (h.end >= w.end) {
        done = true;
        break;
      }
      cur = h.end + 1;
    }
    if (!done) out.push_back({cur, w.end});
  }
  return out;
}

json::Json iomem_json(const std::vector<IomemEntry>& tree) {
  json::Json a = json::Json::array();
  for (const IomemEntry& e : tree) a.push_back({{"start", e.start}, {"end", e.end}, {"name", e.name}, {"depth", e.depth}});
  return a;
}

json::Json ranges_json(const std::vector<PhysRange>& ranges) {
  json::Json a = json::Json::array();
  for (const PhysRange& r : ranges) a.push_back({{"start", r.start}, {"end", r.end}});
  return a;
}

}  // namespace mlfx::agent::physical
