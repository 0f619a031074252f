#include "cupti/copy_out.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace mlfx::cupti {
namespace {

// Produces one range's bytes chunk by chunk; after a failed read, zeros to the end, listed in
// `zero_filled` (the dump's .mlfx.unreadable table) so that no reader takes them for data.
bool produce_range(const LiveRange& range, DeviceReader& reader, const cudacore::Sink& emit,
                   CopyOutReport& report, cudacore::CoreWriter::Ranges& zero_filled) {
  // Never destroyed: the copy-out thread may still run while the process exits.
  static const std::vector<uint8_t>& zeros = *new std::vector<uint8_t>(1 << 20);
  const size_t chunk = std::max<size_t>(reader.chunk_size(), 1);
  uint64_t offset = 0;
  std::string error;
  while (offset < range.size) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(chunk, range.size - offset));
    const uint8_t* bytes = reader.read(range.context, range.address + offset, len, &error);
    if (!bytes) break;
    if (!emit(bytes, len)) return false;
    offset += len;
  }
  if (offset == range.size) return true;
  ++report.failed_ranges;
  zero_filled.emplace_back(range.address + offset, range.size - offset);
  if (report.failures.size() < CopyOutReport::kMaxFailuresListed)
    report.failures.push_back(
        {range.address, range.size, offset, error.empty() ? "read failed" : error});
  while (offset < range.size) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(zeros.size(), range.size - offset));
    if (!emit(zeros.data(), len)) return false;
    offset += len;
  }
  return true;
}

}  // namespace

CopyOutReport write_dump(const std::vector<LiveRange>& ranges, const DumpTables& tables,
                         DeviceReader& reader, const cudacore::Sink& sink) {
  const auto start = std::chrono::steady_clock::now();
  CopyOutReport report;
  cudacore::CoreWriter writer;
  writer.add_meta_data(tables.meta);
  const uint32_t device_table = writer.add_device_table(tables.devices);
  for (uint32_t d = 0; d < tables.devices.size(); ++d) {
    std::vector<cudacore::ContextInfo> contexts;
    for (const auto& c : tables.contexts)
      if (c.device_index == d) contexts.push_back(c);
    writer.add_context_table(device_table, d, contexts);
  }
  cudacore::CoreWriter::Ranges zero_filled;
  for (const LiveRange& range : ranges) {
    if (range.size == 0) continue;
    writer.add_memory(
        range.address, range.size,
        [&range, &reader, &report, &zero_filled](const cudacore::Sink& emit, std::string*) {
          return produce_range(range, reader, emit, report, zero_filled);
        },
        range.kind == RangeKind::kManaged);
    ++report.ranges;
    report.bytes += range.size;
  }
  // Written after the memory: by then it is known which ranges failed (at most one row each).
  writer.add_unreadable_table(report.ranges, [&zero_filled] { return zero_filled; });
  report.dump_bytes = writer.total_size();
  std::string error;
  report.written = writer.write(sink, &error);
  if (!report.written) report.error = error.empty() ? "the output refused the dump" : error;
  report.ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::steady_clock::now() - start)
                                        .count());
  return report;
}

std::string expand_path(const std::string& path_template, pid_t pid, int64_t epoch_seconds) {
  std::string out;
  for (size_t i = 0; i < path_template.size(); ++i) {
    if (path_template[i] != '%' || i + 1 == path_template.size()) {
      out += path_template[i];
      continue;
    }
    const char c = path_template[++i];
    if (c == 'p')
      out += std::to_string(pid);
    else if (c == 't')
      out += std::to_string(epoch_seconds);
    else if (c == '%')
      out += '%';
    else
      (out += '%') += c;  // unknown: kept as written
  }
  return out;
}

int open_output(const std::string& path, std::string* error) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd >= 0) return fd;
  if (errno == EEXIST) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode)) {
      // The agent reads the other end; blocks this (the copy-out's own) thread until it opens.
      fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
      if (fd >= 0) return fd;
    } else {
      *error = path + " exists and is not a FIFO: not overwritten (put %t in MLFX_CUPTI_OUTPUT)";
      return -1;
    }
  }
  *error = "open " + path + ": " + std::strerror(errno);
  return -1;
}

}  // namespace mlfx::cupti
