#include "procfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>

#include "mlfx/base/file.h"

namespace mlfx::agent::process {

std::string proc_path(pid_t pid, std::string_view leaf) {
  return "/proc/" + std::to_string(pid) + "/" + std::string(leaf);
}

std::string task_path(pid_t pid, pid_t tid, std::string_view leaf) {
  return "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/" + std::string(leaf);
}

Result<std::string> read_proc_file(const std::string& path, size_t max_size) {
  MLFX_ASSIGN(File f, File::open_read(path));
  std::string text;
  size_t used = 0;
  while (true) {
    if (used == text.size()) {
      if (text.size() >= max_size)
        return fail(Errc::kBadFormat, path + " is larger than " + std::to_string(max_size) + " bytes");
      text.resize(std::min(max_size, std::max<size_t>(4096, text.size() * 2)));
    }
    MLFX_ASSIGN(size_t n, f.read_full(reinterpret_cast<uint8_t*>(text.data()) + used,
                                      text.size() - used));
    if (n == 0) break;
    used += n;
  }
  text.resize(used);
  return text;
}

namespace {

template <class T>
bool parse_number(std::string_view s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

Result<ProcStat> parse_proc_stat(std::string_view text) {
  auto open = text.find('(');
  auto close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open)
    return fail(Errc::kBadFormat, "unexpected /proc/PID/stat format");
  ProcStat st;
  st.comm = std::string(text.substr(open + 1, close - open - 1));
  // Fields from 3 (state) on, space separated.
  std::vector<std::string_view> f;
  std::string_view rest = text.substr(close + 1);
  while (!rest.empty()) {
    auto b = rest.find_first_not_of(" \n");
    if (b == std::string_view::npos) break;
    rest = rest.substr(b);
    auto e = rest.find_first_of(" \n");
    f.push_back(rest.substr(0, e));
    rest = e == std::string_view::npos ? std::string_view() : rest.substr(e);
  }
  // f[0] is field 3 of proc(5); field N is f[N - 3].
  auto field = [&](int n) { return f[static_cast<size_t>(n - 3)]; };
  if (f.size() < 20 || field(3).size() != 1)
    return fail(Errc::kBadFormat, "unexpected /proc/PID/stat format (" + std::to_string(f.size()) + " fields)");
  st.state = field(3)[0];
  bool ok = parse_number(field(4), st.ppid) && parse_number(field(5), st.pgrp) &&
            parse_number(field(6), st.session) && parse_number(field(9), st.flags) &&
            parse_number(field(14), st.utime) && parse_number(field(15), st.stime) &&
            parse_number(field(16), st.cutime) && parse_number(field(17), st.cstime) &&
            parse_number(field(19), st.nice) && parse_number(field(20), st.num_threads) &&
            parse_number(field(22), st.starttime);
  if (!ok) return fail(Errc::kBadFormat, "unexpected number in /proc/PID/stat");
  return st;
}

std::optional<std::string> status_field(std::string_view status, std::string_view key) {
  size_t pos = 0;
  while (pos < status.size()) {
    size_t end = status.find('\n', pos);
    if (end == std::string_view::npos) end = status.size();
    std::string_view line = status.substr(pos, end - pos);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ':') {
      std::string_view v = line.substr(key.size() + 1);
      auto b = v.find_first_not_of(" \t");
      return b == std::string_view::npos ? std::string() : std::string(v.substr(b));
    }
    pos = end + 1;
  }
  return std::nullopt;
}

Result<std::vector<pid_t>> list_threads(pid_t pid) {
  const std::string dir = proc_path(pid, "task");
  DIR* d = opendir(dir.c_str());
  if (!d) {
    int err = errno;
    return fail(err == ENOENT ? Errc::kNotFound : err == EACCES ? Errc::kPermission : Errc::kIo,
                "cannot list " + dir + ": " + errno_text(err));
  }
  std::vector<pid_t> tids;
  while (dirent* e = readdir(d)) {
    pid_t tid = 0;
    if (parse_number(std::string_view(e->d_name), tid) && tid > 0) tids.push_back(tid);
  }
  closedir(d);
  std::sort(tids.begin(), tids.end());
  // A process whose last thread is gone lists nothing.
  if (tids.empty()) return fail(Errc::kNotFound, "process " + std::to_string(pid) + " has no threads left");
  return tids;
}

Result<uint64_t> mem_available_bytes() {
  MLFX_ASSIGN(std::string text, read_proc_file("/proc/meminfo", 1 << 20));
  auto kb = status_field(text, "MemAvailable");
  if (!kb) return fail(Errc::kBadFormat, "/proc/meminfo has no MemAvailable line");
  return std::strtoull(kb->c_str(), nullptr, 10) * 1024;
}

Result<uint64_t> boot_time_seconds() {
  MLFX_ASSIGN(std::string stat, read_proc_file("/proc/stat"));
  size_t pos = stat.find("\nbtime ");
  if (pos == std::string::npos) return fail(Errc::kBadFormat, "no btime in /proc/stat");
  pos += 7;
  size_t end = stat.find('\n', pos);
  uint64_t v = 0;
  if (!parse_number(std::string_view(stat).substr(pos, end - pos), v))
    return fail(Errc::kBadFormat, "bad btime in /proc/stat");
  return v;
}

std::string utc_from_micros(int64_t micros) {
  time_t secs = static_cast<time_t>(micros / 1000000);
  tm t{};
  gmtime_r(&secs, &t);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                static_cast<long long>(micros % 1000000));
  return buf;
}

std::string errno_name(int err) {
  const char* name = strerrorname_np(err);
  return std::string(name ? name : "errno " + std::to_string(err)) + " (" + std::strerror(err) + ")";
}

}  // namespace mlfx::agent::process
