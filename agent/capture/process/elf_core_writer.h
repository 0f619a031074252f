// Writes a standard Linux ELF core (ELFCLASS64, ET_CORE) as one stream: every offset and size
// is planned from the notes and the segment list before the first byte is emitted, then the
// bytes go straight to a sink (a bundle stream) while memory is read. Nothing touches the disk.
//
// File layout (as the kernel's own core dumps): ELF header, program headers (one PT_NOTE,
// then one PT_LOAD per segment), [one section header when there are PN_XNUM or more program
// headers], the notes, zero padding to a page boundary, then each segment's bytes in order at
// page-aligned offsets. A segment without file bytes (p_filesz 0) takes no space.
//
// Memory is read straight into the sink's buffers (the bundle writer's chunks), so there is no
// copy between /proc/PID/mem and sealing.
#pragma once

#include <cstdint>
#include <algorithm>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "mlfx/base/bytes.h"
#include "mlfx/base/progress.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::process {

struct CoreNote {
  std::string name;  // "CORE", "LINUX"
  uint32_t type = 0;
  Bytes desc;
};

struct CoreSegment {
  uint64_t vaddr = 0, memsz = 0;
  uint64_t filesz = 0;  // memsz, or 0 for memory that is not dumped
  uint32_t flags = 0;   // PF_R | PF_W | PF_X
};

struct PlannedSegment : CoreSegment {
  uint64_t offset = 0;  // file offset of the segment's bytes
};

// Where the bytes of memory come from (the target's /proc/PID/mem; a buffer in tests).
class MemoryReader {
 public:
  virtual ~MemoryReader() = default;
  // Reads up to `len` bytes at `addr`; returns how many (> 0). A failure's message is
  // recorded as the reason the range is missing, e.g. "EIO (Input/output error)".
  virtual Result<size_t> read(uint64_t addr, uint8_t* buf, size_t len) = 0;
  // After a failed read: true when the memory is gone for good (the process exited), so that
  // nothing more is tried and the rest of the core is written as zeros at once.
  virtual bool gone() { return false; }
  // How it went, for the records (e.g. "killed by signal 9 (SIGKILL)").
  virtual std::string gone_reason() { return "the memory became unreadable"; }
};

struct UnreadableRange {
  uint64_t start = 0, end = 0;
  std::string reason;
};

struct EmitStats {
  uint64_t bytes_read = 0;         // memory read into the core
  uint64_t bytes_zero_filled = 0;  // unreadable memory written as zeros
  std::vector<UnreadableRange> unreadable;  // merged where adjacent with the same reason
  // The memory went away while the core was emitted (the target exited): everything from
  // `gone_at` (an address) on is zeros, `bytes_lost` of them (also in bytes_zero_filled).
  bool source_gone = false;
  uint64_t gone_at = 0, bytes_lost = 0;
  std::string gone_reason;
};

// Where the core's bytes go, filled in place.
class CoreSink {
 public:
  virtual ~CoreSink() = default;
  // Room for 1..max bytes.
  virtual Result<std::span<uint8_t>> buffer(size_t max) = 0;
  // The first n bytes of the last buffer() are the next bytes of the core.
  virtual Status commit(size_t n) = 0;
};

// A CoreSink that hands each block to a function (tests, plain files).
using ByteSink = std::function<Status(ByteView)>;
class CopyingSink : public CoreSink {
 public:
  explicit CopyingSink(ByteSink fn) : fn_(std::move(fn)), buf_(1u << 20) {}
  Result<std::span<uint8_t>> buffer(size_t max) override {
    return std::span<uint8_t>(buf_.data(), std::min(std::max<size_t>(max, 1), buf_.size()));
  }
  Status commit(size_t n) override { return n ? fn_({buf_.data(), n}) : Status{}; }

 private:
  ByteSink fn_;
  Bytes buf_;
};

class ElfCoreLayout {
 public:
  // Fails for segments that are not whole pages at page-aligned addresses.
  static Result<ElfCoreLayout> plan(uint16_t machine, std::vector<CoreNote> notes,
                                    const std::vector<CoreSegment>& segments, uint64_t page_size);

  uint64_t file_size() const { return file_size_; }
  uint64_t note_offset() const { return note_offset_; }
  uint64_t note_size() const { return note_size_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t page_size() const { return page_size_; }
  uint64_t dumped_bytes() const { return file_size_ - data_offset_; }
  const std::vector<PlannedSegment>& segments() const { return segments_; }
  const std::vector<CoreNote>& notes() const { return notes_; }

  // Headers, notes and padding: the file's bytes before data_offset().
  Bytes encode_prefix() const;

  // Emits the whole file: exactly file_size() bytes. Memory that cannot be read is written as
  // zeros page by page and listed in `stats`; once the reader says the memory is gone, all
  // the rest is zeros (stats.source_gone). Only a sink failure stops the emission.
  Status emit(MemoryReader& memory, CoreSink& sink, EmitStats& stats, Progress* progress) const;
  Status emit(MemoryReader& memory, const ByteSink& sink, EmitStats& stats, Progress* progress) const {
    CopyingSink copying(sink);
    return emit(memory, copying, stats, progress);
  }

 private:
  uint16_t machine_ = 0;
  uint64_t page_size_ = 0;
  std::vector<CoreNote> notes_;
  std::vector<PlannedSegment> segments_;
  bool extended_numbering_ = false;  // e_phnum is PN_XNUM; the count is in section 0's sh_info
  uint64_t note_offset_ = 0, note_size_ = 0, data_offset_ = 0, file_size_ = 0;
};

// Size of one note in the PT_NOTE segment (header, name and descriptor, each 4-byte aligned).
uint64_t core_note_size(const CoreNote& n);

}  // namespace mlfx::agent::process
