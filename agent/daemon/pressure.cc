#include "daemon/pressure.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "capture/process/procfs.h"
#include "daemon/targets.h"

namespace mlfx::agent::daemon {
namespace {

bool exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup (unified) or its "unified" child
// (hybrid, systemd's layout on cgroup v1 machines).
std::string cgroup2_root() {
  for (const char* root : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"})
    if (exists(std::string(root) + "/cgroup.controllers")) return root;
  return {};
}

}  // namespace

Result<PressureSource> pressure_source_of(pid_t pid) {
  MLFX_ASSIGN(std::string text, process::read_proc_file(process::proc_path(pid, "cgroup"), 1 << 16));
  std::string path;  // the v2 entry only: systemd's v1 hierarchy has no pressure files
  size_t pos = text.find("0::");
  if (pos != std::string::npos && (pos == 0 || text[pos - 1] == '\n')) path = text.substr(pos + 3, text.find('\n', pos) - pos - 3);
  const std::string root = cgroup2_root();
  if (!root.empty() && !path.empty() && path != "/" && path.find("/..") == std::string::npos) {
    const std::string file = root + path + "/memory.pressure";
    if (exists(file)) return PressureSource{file, "cgroup " + path};
  }
  if (exists("/proc/pressure/memory")) return PressureSource{"/proc/pressure/memory", "system-wide"};
  return fail(Errc::kNotFound, "this kernel reports no memory pressure (no /proc/pressure/memory: built without "
                               "CONFIG_PSI or booted with psi=0; boot with psi=1)");
}

Result<PressureWatch> PressureWatch::open(const PressureSource& source, const PressureThreshold& threshold) {
  int fd = ::open(source.file.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return fail(Errc::kIo, "cannot open " + source.file + ": " + process::errno_name(errno));
  File f(fd, source.file);
  const std::string trigger = "some " + std::to_string(threshold.stall.count()) + " " +
                              std::to_string(threshold.window.count());
  PressureWatch w(std::move(f), source, threshold);
  // The terminating NUL is part of the write, as the kernel documentation's example does.
  if (::write(fd, trigger.c_str(), trigger.size() + 1) < 0) {
    w.sampled_ = true;
    w.mode_ = "sampled: the kernel refused the trigger '" + trigger + "' (" + process::errno_name(errno) + ")";
    if (!some_total(w.figures()))
      return fail(Errc::kIo, source.file + " has no 'some ... total=' line to sample (" + w.figures() + ")");
  }
  return w;
}

std::optional<uint64_t> some_total(std::string_view figures) {
  if (figures.rfind("some ", 0) != 0) return std::nullopt;
  size_t at = figures.find("total=");
  size_t end = figures.find_first_of(";\n", 0);
  if (at == std::string_view::npos || (end != std::string_view::npos && at > end)) return std::nullopt;
  uint64_t v = 0;
  size_t i = at + 6;
  if (i >= figures.size() || figures[i] < '0' || figures[i] > '9') return std::nullopt;
  for (; i < figures.size() && figures[i] >= '0' && figures[i] <= '9'; ++i) v = v * 10 + uint64_t(figures[i] - '0');
  return v;
}

bool PressureWatch::sample(int64_t now_ns) {
  auto total = some_total(figures());
  if (!total) return false;
  const int64_t window_ns = std::chrono::nanoseconds(threshold_.window).count();
  samples_.emplace_back(now_ns, *total);
  while (samples_.size() > 1 && now_ns - samples_[1].first >= window_ns) samples_.pop_front();
  const uint64_t stalled_us = *total - std::min(*total, samples_.front().second);
  if (stalled_us < static_cast<uint64_t>(threshold_.stall.count())) return false;
  samples_.clear();  // the next crossing is measured from here: at most one per window
  samples_.emplace_back(now_ns, *total);
  return true;
}

std::string PressureWatch::figures() const {
  auto text = process::read_proc_file(source_.file, 4096);
  if (!text) return {};
  std::string s = *text;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  for (char& c : s)
    if (c == '\n') c = ';';
  return s;
}

}  // namespace mlfx::agent::daemon
