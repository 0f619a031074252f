// The `pagemap` stream of a whole-memory bundle (protocol/doc/physical-capture.md): each captured
// process's virtual->physical map, raw from /proc/PID/pagemap, one record per readable mapping.
//
//   header : u8 magic[8] = "MLFXPMAP", u32 version = 1, u32 record_count
//   record : u32 pid, u32 flags (0), u64 start, u64 pages, then pages x u64 entries
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "capture/process/proc_maps.h"
#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::physical {

inline constexpr char kPagemapMagic[8] = {'M', 'L', 'F', 'X', 'P', 'M', 'A', 'P'};
inline constexpr uint32_t kPagemapVersion = 1;
inline constexpr uint64_t kPagemapPresent = uint64_t{1} << 63;
inline constexpr uint64_t kPagemapSwapped = uint64_t{1} << 62;
inline constexpr uint64_t kPagemapPfnMask = (uint64_t{1} << 55) - 1;

// The `moved` stream: pages of a frozen process that the kernel moved while the image was read,
// read through /proc/PID/mem. "MLFXMOVD", u32 version 1, u32 count; then count x {u32 pid,
// u32 flags (0), u64 vaddr, page_size bytes}.
inline constexpr char kMovedMagic[8] = {'M', 'L', 'F', 'X', 'M', 'O', 'V', 'D'};
inline constexpr uint32_t kMovedVersion = 1;

// The mappings whose pagemap is recorded: readable ones, the [vsyscall] page excepted (it is
// not in the page tables; reading its pagemap gives nothing useful).
bool pagemap_recorded(const process::MapEntry& m);

class PagemapWriter {
 public:
  PagemapWriter();
  // Reads the entries of [m.start, m.end) from `pagemap_fd` (/proc/PID/pagemap) and appends
  // them as one record. `max_total_pages` bounds the stream (a huge readable reservation).
  Status add_mapping(int pagemap_fd, pid_t pid, const process::MapEntry& m, uint64_t page_size,
                     uint64_t max_total_pages = uint64_t{1} << 27);
  uint32_t records() const { return records_; }
  // The stream (header with the record count, then the records). Leaves the writer empty.
  Bytes finish();

  // The entries of the last record added (for choosing sample pages).
  std::span<const uint8_t> last_entries() const;

 private:
  Bytes out_;
  uint32_t records_ = 0;
  uint64_t total_pages_ = 0;
  size_t last_entries_at_ = 0;
};

// A decoded pagemap stream (tests, and a check of what was written).
struct PagemapRecord {
  uint32_t pid = 0, flags = 0;
  uint64_t start = 0;
  std::vector<uint64_t> entries;
};
Result<std::vector<PagemapRecord>> parse_pagemap_stream(ByteView stream);

}  // namespace mlfx::agent::physical
