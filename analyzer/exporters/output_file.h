// A new output file written front to back: small writes are buffered, large spans go straight
// to the kernel, and a file that was never committed is removed, so a failed export leaves
// no half-written file behind.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <sys/types.h>

#include "mlfx/base/bytes.h"
#include "mlfx/base/file.h"
#include "mlfx/base/result.h"

namespace mlfx::exporters {

class OutputFile {
 public:
  // Creates `path`, refusing to replace an existing file.
  static Result<OutputFile> create(const std::string& path, mode_t mode = 0644);

  OutputFile(OutputFile&& o) noexcept;
  OutputFile& operator=(OutputFile&&) = delete;
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile();  // removes the file unless commit() succeeded

  Status write(ByteView data);
  // Bytes written so far (buffered ones included): the offset of the next write.
  uint64_t offset() const { return offset_; }
  // Overwrites bytes already written at `offset` (a header field known only afterwards).
  Status patch(uint64_t offset, ByteView data);
  // Flushes and closes (no fsync); the file stays.
  Status commit();
  const std::string& path() const { return file_.path(); }

 private:
  explicit OutputFile(File file) : file_(std::move(file)) {}
  Status flush();

  File file_;
  Bytes buffer_;
  uint64_t offset_ = 0;
  bool committed_ = false;
};

// Writes a whole new file (a JSON document beside the tensors): like every export, not
// fsynced, and removed again if it could not be written whole.
Status write_export_file(const std::string& path, std::string_view text, mode_t mode = 0640);

}  // namespace mlfx::exporters
