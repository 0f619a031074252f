#include "daemon/targets.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "capture/process/procfs.h"
#include "mlfx/base/file.h"

namespace mlfx::agent::daemon {
namespace {

std::string read_link(const std::string& path) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// A configured executable path and where its symbolic links lead (python3 -> python3.11).
bool same_executable(const std::string& configured, const std::string& exe) {
  if (configured == exe) return true;
  char resolved[PATH_MAX];
  return ::realpath(configured.c_str(), resolved) && exe == resolved;
}

// "/a/b" is under "/a" and "/a/b", not under "/a/bc".
bool under(const std::string& path, const std::string& prefix) {
  if (prefix == "/") return true;
  return path.compare(0, prefix.size(), prefix) == 0 && (path.size() == prefix.size() || path[prefix.size()] == '/');
}

bool has_component(const std::string& path, const std::string& name) {
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (path.compare(start, end - start, name) == 0 && end - start == name.size()) return true;
    start = end + 1;
  }
  return false;
}

}  // namespace

std::string cgroup_path(std::string_view text) {
  std::string v2, systemd;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.rfind("0::", 0) == 0) v2 = std::string(line.substr(3));
    size_t colon = line.find(':');
    if (colon != std::string_view::npos && line.substr(colon + 1).rfind("name=systemd:", 0) == 0)
      systemd = std::string(line.substr(colon + 1 + 13));
  }
  if ((v2.empty() || v2 == "/") && !systemd.empty()) return systemd;
  return v2;
}

Result<ProcessFacts> read_process_facts(pid_t pid) {
  ProcessFacts f;
  f.pid = pid;
  MLFX_ASSIGN(std::string comm, process::read_proc_file(process::proc_path(pid, "comm"), 64));
  f.comm = comm.substr(0, comm.find('\n'));
  f.exe = read_link(process::proc_path(pid, "exe"));
  // The first 4 KiB of the command line: a bound on what the regex walks (a process chooses it).
  if (auto file = File::open_read(process::proc_path(pid, "cmdline"))) {
    f.cmdline.resize(4096);
    auto n = file->read_full(reinterpret_cast<uint8_t*>(f.cmdline.data()), f.cmdline.size());
    f.cmdline.resize(n ? *n : 0);
    while (!f.cmdline.empty() && f.cmdline.back() == '\0') f.cmdline.pop_back();
    std::replace(f.cmdline.begin(), f.cmdline.end(), '\0', ' ');
  }
  if (auto cg = process::read_proc_file(process::proc_path(pid, "cgroup"), 1 << 16)) f.cgroup = cgroup_path(*cg);
  return f;
}

bool matches(const TargetSpec& t, const ProcessFacts& f) {
  if (!t.pid.empty() && std::find(t.pid.begin(), t.pid.end(), f.pid) == t.pid.end()) return false;
  if (!t.exe.empty() && std::none_of(t.exe.begin(), t.exe.end(), [&](const std::string& e) { return same_executable(e, f.exe); }))
    return false;
  if (!t.comm.empty() && std::find(t.comm.begin(), t.comm.end(), f.comm) == t.comm.end()) return false;
  if (t.cmdline_re && !std::regex_search(f.cmdline, *t.cmdline_re)) return false;
  if (!t.cgroup.empty() && std::none_of(t.cgroup.begin(), t.cgroup.end(), [&](const std::string& c) { return under(f.cgroup, c); }))
    return false;
  if (!t.unit.empty() && std::none_of(t.unit.begin(), t.unit.end(), [&](const std::string& u) { return has_component(f.cgroup, u); }))
    return false;
  return true;
}

std::optional<TargetProcess> target_of(const std::vector<TargetSpec>& targets, pid_t pid, pid_t self) {
  if (pid == self || pid <= 0) return std::nullopt;
  auto facts = read_process_facts(pid);
  if (!facts || facts->exe.empty()) return std::nullopt;  // gone, or a kernel thread
  for (const TargetSpec& t : targets)
    if (matches(t, *facts)) return TargetProcess{pid, t.name, std::move(*facts)};
  return std::nullopt;
}

std::map<pid_t, TargetProcess> find_targets(const std::vector<TargetSpec>& targets, pid_t self, size_t max_processes) {
  std::map<pid_t, TargetProcess> found;
  DIR* proc = ::opendir("/proc");
  if (!proc) return found;
  size_t seen = 0;
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end || pid <= 0) continue;
    if (++seen > max_processes) break;
    if (auto t = target_of(targets, static_cast<pid_t>(pid), self)) found.emplace(t->pid, std::move(*t));
  }
  ::closedir(proc);
  return found;
}

}  // namespace mlfx::agent::daemon
