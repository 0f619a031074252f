#include "exporters/output_file.h"

#include <unistd.h>

namespace mlfx::exporters {
namespace {
constexpr size_t kBufferSize = 1 << 20;
constexpr size_t kDirectWrite = 64 << 10;  // larger spans skip the buffer
}

Result<OutputFile> OutputFile::create(const std::string& path, mode_t mode) {
  MLFX_ASSIGN(File f, File::create_new(path, mode));
  return OutputFile(std::move(f));
}

OutputFile::OutputFile(OutputFile&& o) noexcept
    : file_(std::move(o.file_)),
      buffer_(std::move(o.buffer_)),
      offset_(o.offset_),
      committed_(o.committed_) {
  o.committed_ = true;  // the moved-from object owns no file any more
}

OutputFile::~OutputFile() {
  if (committed_) return;
  (void)file_.close();
  ::unlink(file_.path().c_str());
}

Status OutputFile::flush() {
  if (buffer_.empty()) return {};
  MLFX_TRY(file_.write_all(buffer_));
  buffer_.clear();
  return {};
}

Status OutputFile::write(ByteView data) {
  offset_ += data.size();
  if (buffer_.size() + data.size() > kBufferSize || data.size() >= kDirectWrite) MLFX_TRY(flush());
  if (data.size() >= kDirectWrite) return file_.write_all(data);
  if (buffer_.capacity() == 0) buffer_.reserve(kBufferSize);
  buffer_.insert(buffer_.end(), data.begin(), data.end());
  return {};
}

Status OutputFile::patch(uint64_t offset, ByteView data) {
  if (offset > offset_ || data.size() > offset_ - offset)
    return fail(Errc::kInvalidArgument, "patch beyond what was written to " + path());
  MLFX_TRY(flush());
  return file_.pwrite_all(offset, data);
}

Status OutputFile::commit() {
  // No fsync: exports are derived from the evidence and can be made again, so like cp and tar
  // we leave write-back to the kernel (waiting for the disk was most of recover's time).
  MLFX_TRY(flush());
  MLFX_TRY(file_.close());
  committed_ = true;
  return {};
}

Status write_export_file(const std::string& path, std::string_view text, mode_t mode) {
  MLFX_ASSIGN(OutputFile out, OutputFile::create(path, mode));
  MLFX_TRY(out.write(as_bytes(text)));
  return out.commit();
}

}  // namespace mlfx::exporters
