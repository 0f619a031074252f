#include "exporters/zip_writer.h"

#include <isa-l/crc.h>

#include <algorithm>

#include "exporters/tensor_record.h"

namespace mlfx::exporters {
namespace {

// APPNOTE.TXT 4.3.7, 4.3.12, 4.3.14-16 and 4.5.3.
constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB", the id torch's writer pads with
constexpr uint16_t kVersion20 = 20;           // stored entries
constexpr uint16_t kVersion45 = 45;           // ZIP64
constexpr uint16_t kFlagUtf8 = 1 << 11;
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;  // 1980-01-01: reproducible output
constexpr uint32_t kMax32 = 0xffffffff;
constexpr uint64_t kMax16 = 0xffff;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCrcFieldOffset = 14;  // in the local header
constexpr size_t kCrcPiece = 1 << 20;

// Little-endian record builder.
class Record {
 public:
  Record& u16(uint64_t v) { return put(v, 2); }
  Record& u32(uint64_t v) { return put(v, 4); }
  Record& u64(uint64_t v) { return put(v, 8); }
  Record& bytes(std::string_view s) {
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  Record& fill(uint8_t c, size_t n) {
    b_.insert(b_.end(), n, c);
    return *this;
  }
  ByteView view() const { return b_; }
  size_t size() const { return b_.size(); }

 private:
  Record& put(uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i) b_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  Bytes b_;
};

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

}  // namespace

Result<ZipWriter> ZipWriter::create(const std::string& path) {
  MLFX_ASSIGN(OutputFile out, OutputFile::create(path));
  return ZipWriter(std::move(out));
}

Status ZipWriter::add(const std::string& name, const SourceBytes& data, uint32_t align) {
  if (finished_) return fail(Errc::kInvalidArgument, "ZIP archive already finished");
  if (name.empty() || name.size() > kMax16 || !is_valid_utf8(name))
    return fail(Errc::kInvalidArgument, "bad ZIP entry name '" + name + "'");
  if (align == 0 || align > 4096)
    return fail(Errc::kInvalidArgument, "ZIP alignment must be 1..4096");
  if (!names_.insert(name).second)
    return fail(Errc::kInvalidArgument, "duplicate ZIP entry '" + name + "'");

  const uint64_t size = data.bytes.size();
  const uint64_t header_offset = out_.offset();
  const bool zip64_sizes = size >= kMax32;
  const bool zip64 = zip64_sizes || header_offset >= kMax32;

  // Extra fields: ZIP64 sizes when they do not fit, then padding up to the alignment.
  const uint64_t before_padding =
      header_offset + kLocalHeaderSize + name.size() + (zip64_sizes ? 20 : 0) + 4;
  const size_t padding = (align - before_padding % align) % align;
  const size_t extra_len = (zip64_sizes ? 20 : 0) + 4 + padding;

  Record h;
  h.u32(kLocalSig).u16(zip64 ? kVersion45 : kVersion20).u16(is_ascii(name) ? 0 : kFlagUtf8);
  h.u16(0).u16(0).u16(kDosDate).u32(0);  // CRC-32: patched once the payload is written
  h.u32(zip64_sizes ? kMax32 : size).u32(zip64_sizes ? kMax32 : size);
  h.u16(name.size()).u16(extra_len).bytes(name);
  if (zip64_sizes) h.u16(kZip64ExtraId).u16(16).u64(size).u64(size);
  h.u16(kPaddingExtraId).u16(padding).fill('Z', padding);
  MLFX_TRY(out_.write(h.view()));
  // The CRC-32 (gzip's reflected IEEE one) in the same pass as the copy, piece by piece, so
  // each piece is still in the cache when it is written.
  uint32_t crc = 0;
  MLFX_TRY(stream_bytes(data, [&](ByteView p) -> Status {
    for (size_t at = 0; at < p.size(); at += kCrcPiece) {
      ByteView piece = p.subspan(at, std::min(kCrcPiece, p.size() - at));
      crc = crc32_gzip_refl(crc, piece.data(), piece.size());
      MLFX_TRY(out_.write(piece));
    }
    return {};
  }));
  uint8_t crc_le[4];
  store_le<uint32_t>(crc_le, crc);
  MLFX_TRY(out_.patch(header_offset + kCrcFieldOffset, crc_le));
  entries_.push_back({name, crc, size, header_offset});
  return {};
}

Status ZipWriter::finish() {
  if (finished_) return fail(Errc::kInvalidArgument, "ZIP archive already finished");
  finished_ = true;
  const uint64_t cd_offset = out_.offset();
  for (const Entry& e : entries_) {
    const bool big_size = e.size >= kMax32;
    const bool big_offset = e.header_offset >= kMax32;
    // ZIP64 extra in the central directory: only the fields whose 32-bit slot says so.
    const size_t extra_len = (big_size || big_offset) ? 4 + 16 * big_size + 8 * big_offset : 0;
    Record c;
    c.u32(kCentralSig).u16(kVersion45).u16(extra_len ? kVersion45 : kVersion20);
    c.u16(is_ascii(e.name) ? 0 : kFlagUtf8).u16(0).u16(0).u16(kDosDate).u32(e.crc);
    c.u32(big_size ? kMax32 : e.size).u32(big_size ? kMax32 : e.size);
    c.u16(e.name.size()).u16(extra_len).u16(0).u16(0).u16(0).u32(0);
    c.u32(big_offset ? kMax32 : e.header_offset).bytes(e.name);
    if (extra_len) {
      c.u16(kZip64ExtraId).u16(extra_len - 4);
      if (big_size) c.u64(e.size).u64(e.size);
      if (big_offset) c.u64(e.header_offset);
    }
    MLFX_TRY(out_.write(c.view()));
  }
  const uint64_t cd_size = out_.offset() - cd_offset;
  const uint64_t count = entries_.size();
  // 0xffff / 0xffffffff in the classic record mean "see the ZIP64 record", so those values
  // themselves already need it.
  const bool zip64 = count >= kMax16 || cd_size >= kMax32 || cd_offset >= kMax32;
  Record end;
  if (zip64) {
    const uint64_t zip64_end_offset = out_.offset();
    end.u32(kZip64EndSig).u64(44).u16(kVersion45).u16(kVersion45).u32(0).u32(0);
    end.u64(count).u64(count).u64(cd_size).u64(cd_offset);
    end.u32(kZip64LocatorSig).u32(0).u64(zip64_end_offset).u32(1);
  }
  end.u32(kEndSig).u16(0).u16(0);
  end.u16(std::min(count, kMax16)).u16(std::min(count, kMax16));
  end.u32(std::min<uint64_t>(cd_size, kMax32)).u32(std::min<uint64_t>(cd_offset, kMax32)).u16(0);
  MLFX_TRY(out_.write(end.view()));
  return out_.commit();
}

}  // namespace mlfx::exporters
