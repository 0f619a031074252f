// A whole-memory capture as the lab opens it (protocol/doc/physical-capture.md): the physical
// image in LiME format, the context the agent recorded at acquisition and, for each process
// it was asked about, the raw pagemap taken while that process was frozen. From those a
// process is rebuilt as a ProcessImage: its virtual pages mapped onto the image's bytes, so
// the frontends and the recovery engine run on it unchanged.
//
// Everything here is hostile input: counts and sizes are bounded by the bytes that hold
// them; pages the image does not hold (swapped, never touched, or a hole in the image) are
// not mapped, and counted, never read as zeros.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layers/lime_layer.h"
#include "layers/process_image.h"
#include "mlfx/base/json.h"

namespace mlfx::physical {

// ---- the pagemap stream ----

inline constexpr std::string_view kPagemapMagic = "MLFXPMAP";
inline constexpr uint32_t kPagemapVersion = 1;
inline constexpr size_t kPagemapHeaderSize = 16, kPagemapRecordHeaderSize = 24;
inline constexpr uint32_t kPagemapMaxRecords = 1u << 20;

// The kernel's pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
inline constexpr uint64_t kPagePresent = 1ull << 63, kPageSwapped = 1ull << 62;
inline constexpr uint64_t kPfnMask = (1ull << 55) - 1;

struct PagemapRecord {
  int32_t pid = 0;
  uint64_t start = 0;           // first virtual address
  uint64_t pages = 0;           // entries that follow
  uint64_t entries_offset = 0;  // where they are in the stream
};

// Every record header, checked against the stream's size; entries are read in place later.
Result<std::vector<PagemapRecord>> parse_pagemap(const layers::Layer& stream, uint64_t page_size);

// ---- the moved stream: pages the kernel moved during the capture, read from the process ----

inline constexpr std::string_view kMovedMagic = "MLFXMOVD";
inline constexpr uint32_t kMovedVersion = 1;
inline constexpr uint32_t kMovedMaxPages = 1u << 22;

struct MovedPage {
  int32_t pid = 0;
  uint64_t vaddr = 0;        // page-aligned
  uint64_t data_offset = 0;  // where its page_size bytes are in the stream
};
Result<std::vector<MovedPage>> parse_moved(const layers::Layer& stream, uint64_t page_size);

// ---- the context ----

struct PageSample {
  uint64_t vaddr = 0;
  std::string sha256;  // hex
};

struct ContextMapping {
  uint64_t start = 0, end = 0, offset = 0, inode = 0;
  std::string perms, path;
  std::string build_id;  // of the mapped file, lowercase hex, read by the agent; empty: none
};

struct ContextProcess {
  int32_t pid = 0;
  std::string comm, cmdline;
  uint64_t threads = 0;
  uint64_t pages_moved = 0;  // the kernel moved them while the image was read: zeroed in the pagemap
  std::vector<ContextMapping> maps;
  std::vector<PageSample> page_sample;
};

struct PhysicalRange {
  uint64_t start = 0, end = 0;  // inclusive
};

struct PhysicalContext {
  std::string source;  // "lime", "kmod"
  std::string banner, release, machine;
  uint64_t page_size = 4096;
  std::vector<PhysicalRange> zero_filled;  // in the image, but zeros the tool wrote
  std::vector<ContextProcess> processes;
  json::Json document;  // the whole context, for the report
  const ContextProcess* find(int32_t pid) const;
};

// The context stream's JSON, with every field the lab relies on type- and range-checked.
Result<PhysicalContext> parse_context(std::string_view text);

// ---- the image ----

// How the pages of one process's readable mappings fared.
struct PageCounts {
  uint64_t in_image = 0;      // present, and the image holds the frame
  uint64_t not_in_image = 0;  // present, but the frame lies outside the image's ranges
  uint64_t swapped = 0;
  uint64_t not_present = 0;   // never touched, or a file page not in the page cache
  uint64_t pfn_hidden = 0;    // present, but the pagemap was read without CAP_SYS_ADMIN
  uint64_t file_not_present = 0;  // of not_present, pages of mapped files (not in the page cache)
};

struct RebuiltProcess {
  layers::ProcessImage image;
  PageCounts pages;
  size_t samples_total = 0, samples_checked = 0;  // the page sample: hashed the same here
  uint64_t pages_moved = 0;                        // the context's: moved during the capture
  uint64_t pages_moved_supplied = 0;               // of them, read from the process (stream moved)
  json::Json to_json() const;  // counts and the sample check, for report.json
};

class PhysicalImage {
 public:
  // `memory`: the image stream; `pagemap` may be null (a capture without --pid), and `moved`
  // (pages that moved during the capture, read from the frozen process) too.
  static Result<PhysicalImage> open(std::shared_ptr<const layers::Layer> memory, std::string_view context_text,
                                    std::shared_ptr<const layers::Layer> pagemap,
                                    std::shared_ptr<const layers::Layer> moved = nullptr);

  // The image's physical address space: its LiME ranges less what the context says the tool
  // wrote as zeros instead of reading (zero_filled): those bytes are absent, not data.
  const layers::SegmentedLayer& physical() const { return *physical_; }
  const std::shared_ptr<const layers::SegmentedLayer>& physical_layer() const { return physical_; }
  const PhysicalContext& context() const { return context_; }
  // Processes with a captured pagemap, in the context's order.
  std::vector<int32_t> pids_with_pagemap() const;

  // The context's kernel banner occurs in the image: it was recorded on the kernel that the
  // image holds. A context from another kernel fails here.
  Status check_banner() const;
  // Process `pid` rebuilt from its pagemap; its page sample must hash the same through the
  // rebuilt mapping (a context or pagemap from another capture fails here).
  Result<RebuiltProcess> process(int32_t pid) const;

 private:
  std::shared_ptr<const layers::Layer> memory_, pagemap_;
  std::shared_ptr<const layers::Layer> evidence_;  // memory_, then moved: what process layers read
  uint64_t memory_size_ = 0;
  std::vector<MovedPage> moved_;
  std::shared_ptr<const layers::SegmentedLayer> physical_;
  PhysicalContext context_;
  std::vector<PagemapRecord> records_;
};

}  // namespace mlfx::physical
