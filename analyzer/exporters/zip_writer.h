// A streaming writer of ZIP archives with stored (uncompressed) entries, as torch.save makes
// them: each payload can start on an aligned offset (padding in an extra field) so readers can
// mmap it, and ZIP64 records appear when a size or offset reaches 4 GiB or there are 65535 or
// more entries. Payloads are streamed from the caller's spans, never copied whole.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "exporters/output_file.h"
#include "exporters/tensor_record.h"

namespace mlfx::exporters {

class ZipWriter {
 public:
  // Creates `path` (never replacing a file); it is removed again unless finish() succeeds.
  static Result<ZipWriter> create(const std::string& path);

  // Adds a stored entry holding `data`, its first payload byte at a file offset that is a
  // multiple of `align` (1..4096). The data is read once.
  Status add(const std::string& name, const SourceBytes& data, uint32_t align = 64);

  // Writes the central directory and end records and closes.
  Status finish();

  size_t entry_count() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    uint32_t crc;
    uint64_t size;
    uint64_t header_offset;
  };
  explicit ZipWriter(OutputFile out) : out_(std::move(out)) {}

  OutputFile out_;
  std::vector<Entry> entries_;
  std::unordered_set<std::string> names_;
  bool finished_ = false;
};

}  // namespace mlfx::exporters
