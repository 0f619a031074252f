// The copy-out: every live tracked range written as a CUDA GPU core dump (the driver's own ELF
// format, protocol/include/mlfx/cudacore/format.h), so the analyzer reads both with one parser.
// Device memory comes through a DeviceReader, chunk by chunk: injection.cc's reads with
// cuMemcpyDtoH into a pinned buffer, the tests' from host memory.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cupti/allocation_table.h"
#include "mlfx/cudacore/writer.h"

namespace mlfx::cupti {

class DeviceReader {
 public:
  virtual ~DeviceReader() = default;
  virtual size_t chunk_size() const = 0;
  // `len` (at most chunk_size()) bytes at device `address`, read in `context`: a pointer valid
  // until the next call, or nullptr with *error saying why.
  virtual const uint8_t* read(uint64_t context, uint64_t address, size_t len,
                              std::string* error) = 0;
};

// The dump's tables besides memory: devices, contexts (device_index: a row of `devices`), metadata.
struct DumpTables {
  std::vector<cudacore::DeviceInfo> devices;
  std::vector<cudacore::ContextInfo> contexts;
  cudacore::MetaData meta;
};

struct RangeFailure {
  uint64_t address = 0, size = 0;
  uint64_t offset = 0;  // the first byte not copied; from there the section holds zeros
  std::string error;
};

struct CopyOutReport {
  bool written = false;  // the dump went out whole (a failed range is zeros in it, listed below)
  std::string error;     // when not written: why (the output, the sink)
  uint64_t ranges = 0, bytes = 0;  // memory sections and their bytes
  uint64_t dump_bytes = 0;         // the whole file
  uint64_t ms = 0;
  uint64_t failed_ranges = 0;
  std::vector<RangeFailure> failures;  // the first kMaxFailuresListed of them
  static constexpr size_t kMaxFailuresListed = 64;
};

// Writes the dump of `ranges` into `sink`. A range whose read fails is zero-filled from the
// failing chunk on, so the dump stays well-formed, and is listed in the report.
CopyOutReport write_dump(const std::vector<LiveRange>& ranges, const DumpTables& tables,
                         DeviceReader& reader, const cudacore::Sink& sink);

// `%p` in a path template replaced by the pid, `%t` by the epoch seconds, `%%` by `%`.
std::string expand_path(const std::string& path_template, pid_t pid, int64_t epoch_seconds);

// Opens the copy-out's output for writing: an existing FIFO (the agent reading) is opened as
// is; otherwise a new file is created 0600 and an existing one is never overwritten (use %t).
// -1 with *error when it cannot be opened.
int open_output(const std::string& path, std::string* error);

}  // namespace mlfx::cupti
