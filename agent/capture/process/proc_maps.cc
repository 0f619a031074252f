#include "proc_maps.h"

#include <charconv>
#include <cstdio>
#include <optional>

#include "procfs.h"

namespace mlfx::agent::process {

std::string MapEntry::range_name() const {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%llx-%llx", static_cast<unsigned long long>(start),
                static_cast<unsigned long long>(end));
  return buf;
}

bool MapEntry::has_vm_flag(std::string_view flag) const {
  for (size_t pos = 0; pos + flag.size() <= vm_flags.size(); pos += 3)
    if (std::string_view(vm_flags).substr(pos, flag.size()) == flag &&
        (pos + flag.size() == vm_flags.size() || vm_flags[pos + flag.size()] == ' '))
      return true;
  return false;
}

namespace {

// Consumes a token up to (not including) `stop` and parses it as a number in `base`.
template <class T>
bool take_number(std::string_view& s, char stop, int base, T& out) {
  auto end = s.find(stop);
  if (end == std::string_view::npos || end == 0) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + end, out, base);
  if (ec != std::errc() || p != s.data() + end) return false;
  s.remove_prefix(end + 1);
  return true;
}

bool parse_line(std::string_view s, MapEntry& m) {
  // "start-end perms offset major:minor inode   path" (path optional, may contain spaces)
  if (!take_number(s, '-', 16, m.start) || !take_number(s, ' ', 16, m.end)) return false;
  auto sp = s.find(' ');
  if (sp != 4) return false;
  m.perms = std::string(s.substr(0, 4));
  s.remove_prefix(5);
  if (!take_number(s, ' ', 16, m.offset) || !take_number(s, ':', 16, m.dev_major)) return false;
  if (!take_number(s, ' ', 16, m.dev_minor)) return false;
  // The inode may end the line when there is no path.
  if (s.find(' ') == std::string_view::npos) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), m.inode);
    if (ec != std::errc() || p != s.data() + s.size()) return false;
    s = {};
  } else if (!take_number(s, ' ', 10, m.inode)) {
    return false;
  }
  auto b = s.find_first_not_of(' ');
  m.path = b == std::string_view::npos ? std::string() : std::string(s.substr(b));
  for (char c : m.perms.substr(0, 3))
    if (c != '-' && c != 'r' && c != 'w' && c != 'x') return false;
  if (m.perms[3] != 'p' && m.perms[3] != 's') return false;
  return m.end > m.start;
}

// smaps field lines ("Size:   4 kB", "VmFlags: rd wr") start with a word ending in ':'.
std::optional<std::string_view> field_key(std::string_view line) {
  auto sp = line.find(' ');
  std::string_view first = line.substr(0, sp);
  if (first.size() < 2 || first.back() != ':') return std::nullopt;
  return first.substr(0, first.size() - 1);
}

Result<std::vector<MapEntry>> parse_entries(std::string_view text, bool smaps) {
  std::vector<MapEntry> maps;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    if (smaps) {
      if (auto key = field_key(line)) {
        if (maps.empty())
          return fail(Errc::kBadFormat, "smaps line " + std::to_string(line_no) + ": field before any mapping");
        if (*key == "VmFlags") {
          std::string_view v = line.substr(line.find(':') + 1);
          auto b = v.find_first_not_of(' '), e = v.find_last_not_of(' ');
          maps.back().vm_flags = b == std::string_view::npos ? "" : std::string(v.substr(b, e - b + 1));
        }
        continue;
      }
    }
    MapEntry m;
    if (!parse_line(line, m))
      return fail(Errc::kBadFormat, "maps line " + std::to_string(line_no) + ": cannot parse '" +
                                        std::string(line.substr(0, 200)) + "'");
    if (!maps.empty() && m.start < maps.back().end)
      return fail(Errc::kBadFormat, "maps line " + std::to_string(line_no) + ": overlaps or is out of order");
    maps.push_back(std::move(m));
  }
  return maps;
}

}  // namespace

Result<std::vector<MapEntry>> parse_proc_maps(std::string_view text) { return parse_entries(text, false); }
Result<std::vector<MapEntry>> parse_proc_smaps(std::string_view text) { return parse_entries(text, true); }

Result<std::vector<MapEntry>> read_proc_maps(pid_t pid) {
  MLFX_ASSIGN(std::string text, read_proc_file(proc_path(pid, "maps"), 256u << 20));
  auto maps = parse_proc_maps(text);
  if (!maps) return fail(std::move(maps).error().context(proc_path(pid, "maps")));
  return maps;
}

Result<std::vector<MapEntry>> read_proc_smaps(pid_t pid) {
  MLFX_ASSIGN(std::string text, read_proc_file(proc_path(pid, "smaps"), 2048u << 20));
  auto maps = parse_proc_smaps(text);
  if (!maps) return fail(std::move(maps).error().context(proc_path(pid, "smaps")));
  return maps;
}

}  // namespace mlfx::agent::process
