// Small readers for /proc/PID files. procfs reports a size of 0 for most of its files, so
// they are read to their end rather than by size.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx::agent::process {

std::string proc_path(pid_t pid, std::string_view leaf);                  // /proc/PID/leaf
std::string task_path(pid_t pid, pid_t tid, std::string_view leaf);       // /proc/PID/task/TID/leaf

// Reads a whole procfs file; refuses more than max_size bytes.
Result<std::string> read_proc_file(const std::string& path, size_t max_size = 64u << 20);

// The fields of /proc/PID/stat (proc(5)) the capture records. comm may hold spaces and
// parentheses, so the fields after it are found from the last ')'.
struct ProcStat {
  std::string comm;
  char state = '?';
  pid_t ppid = 0, pgrp = 0, session = 0;
  uint64_t flags = 0;  // PF_* of the task
  uint64_t utime = 0, stime = 0;    // clock ticks
  int64_t cutime = 0, cstime = 0;   // clock ticks
  int64_t nice = 0;
  int64_t num_threads = 0;
  uint64_t starttime = 0;  // clock ticks after boot
};
Result<ProcStat> parse_proc_stat(std::string_view text);

// "Key:\tvalue" lines of /proc/PID/status.
std::optional<std::string> status_field(std::string_view status, std::string_view key);

// Thread ids of a process, ascending. kNotFound when the process does not exist.
Result<std::vector<pid_t>> list_threads(pid_t pid);

// The machine's boot time in seconds since the epoch (/proc/stat btime).
Result<uint64_t> boot_time_seconds();

// MemAvailable of /proc/meminfo in bytes: memory the kernel can give without swapping.
Result<uint64_t> mem_available_bytes();

// "2026-11-21T21:53:24.120000Z" for a time in microseconds since the epoch.
std::string utc_from_micros(int64_t micros);

// "EIO (Input/output error)".
std::string errno_name(int err);

}  // namespace mlfx::agent::process
