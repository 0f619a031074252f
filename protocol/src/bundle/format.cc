#include "mlfx/bundle/format.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "mlfx/crypto/hash.h"

namespace mlfx::bundle {

std::string record_type_name(uint32_t type) {
  std::string s;
  for (int i = 0; i < 4; ++i) {
    char c = static_cast<char>((type >> (8 * i)) & 0xff);
    if (c == 0) break;
    s += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return s;
}

// Header layout: magic[8] major u16 minor u16 header_size u32 bundle_id[16] chunk_size u32
// flags u32 reserved[16] check[8] (first 8 bytes of SHA-256 of bytes 0..55).
std::array<uint8_t, kFileHeaderSize> encode_file_header(const FileHeader& h) {
  std::array<uint8_t, kFileHeaderSize> b{};
  std::memcpy(b.data(), kFileMagic.data(), kFileMagic.size());
  store_le<uint16_t>(&b[8], h.major);
  store_le<uint16_t>(&b[10], h.minor);
  store_le<uint32_t>(&b[12], kFileHeaderSize);
  std::memcpy(&b[16], h.bundle_id.data(), kBundleIdSize);
  store_le<uint32_t>(&b[32], h.chunk_size);
  Bytes check = crypto::sha256({b.data(), 56});
  std::memcpy(&b[56], check.data(), 8);
  return b;
}

Result<FileHeader> decode_file_header(ByteView b) {
  if (b.size() < kFileHeaderSize)
    return fail(Errc::kBadFormat, "file is " + std::to_string(b.size()) +
                                      " bytes, shorter than an mlfx bundle header (64 bytes)");
  if (std::memcmp(b.data(), kFileMagic.data(), kFileMagic.size()) != 0)
    return fail(Errc::kBadFormat, "not an mlfx bundle (bad magic at file offset 0)");
  FileHeader h;
  h.major = load_le<uint16_t>(&b[8]);
  h.minor = load_le<uint16_t>(&b[10]);
  if (h.major != kFormatMajor)
    return fail(Errc::kUnsupported, "bundle format version " + std::to_string(h.major) + "." +
                                        std::to_string(h.minor) +
                                        " is not supported by this mlfx (reads 1.x)");
  Bytes check = crypto::sha256(b.first(56));
  if (std::memcmp(check.data(), &b[56], 8) != 0)
    return fail(Errc::kCorrupt, "file header (offset 0..63) fails its checksum");
  if (load_le<uint32_t>(&b[12]) != kFileHeaderSize)
    return fail(Errc::kBadFormat, "file header size is not 64");
  std::memcpy(h.bundle_id.data(), &b[16], kBundleIdSize);
  h.chunk_size = load_le<uint32_t>(&b[32]);
  if (h.chunk_size < kMinChunkSize || h.chunk_size > kMaxChunkSize)
    return fail(Errc::kBadFormat, "chunk size " + std::to_string(h.chunk_size) + " out of range");
  for (size_t i = 36; i < 56; ++i)
    if (b[i] != 0) return fail(Errc::kBadFormat, "reserved header byte " + std::to_string(i) + " is not zero");
  return h;
}

// Record header layout: type u32, flags u32, payload_size u64, stream u32, reserved u32 (0),
// sequence u64.
std::array<uint8_t, kRecordHeaderSize> encode_record_header(const RecordHeader& h) {
  std::array<uint8_t, kRecordHeaderSize> b{};
  store_le<uint32_t>(&b[0], h.type);
  store_le<uint32_t>(&b[4], h.flags);
  store_le<uint64_t>(&b[8], h.payload_size);
  store_le<uint32_t>(&b[16], h.stream);
  store_le<uint64_t>(&b[24], h.sequence);
  return b;
}

Result<RecordHeader> decode_record_header(ByteView b, uint64_t off) {
  RecordHeader h;
  h.type = load_le<uint32_t>(&b[0]);
  h.flags = load_le<uint32_t>(&b[4]);
  h.payload_size = load_le<uint64_t>(&b[8]);
  h.stream = load_le<uint32_t>(&b[16]);
  h.sequence = load_le<uint64_t>(&b[24]);
  if (load_le<uint32_t>(&b[20]) != 0)
    return fail(Errc::kBadFormat,
                "record at offset " + std::to_string(off) + ": reserved field is not zero");
  return h;
}

std::array<uint8_t, 12> chunk_nonce(uint32_t stream, uint64_t chunk) {
  std::array<uint8_t, 12> n{};
  store_le<uint32_t>(&n[0], stream);
  store_le<uint64_t>(&n[4], chunk);
  return n;
}

Bytes chunk_aad(const BundleId& id, ByteView record_header) {
  Bytes aad(kChunkAadContext.begin(), kChunkAadContext.end());
  aad.insert(aad.end(), id.begin(), id.end());
  aad.insert(aad.end(), record_header.begin(), record_header.end());
  return aad;
}

void encode_chunk_entry(const ChunkEntry& e, uint8_t* out) {
  store_le<uint64_t>(out, e.record_offset);
  store_le<uint32_t>(out + 8, e.plaintext_size);
  store_le<uint32_t>(out + 12, e.flags);
  std::memcpy(out + 16, e.record_sha256.data(), 32);
}

ChunkEntry decode_chunk_entry(const uint8_t* in) {
  ChunkEntry e;
  e.record_offset = load_le<uint64_t>(in);
  e.plaintext_size = load_le<uint32_t>(in + 8);
  e.flags = load_le<uint32_t>(in + 12);
  std::memcpy(e.record_sha256.data(), in + 16, 32);
  return e;
}

bool is_valid_stream_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name[0] == '.') return false;
  for (std::string_view reserved : kReservedStreamNames)
    if (std::equal(name.begin(), name.end(), reserved.begin(), reserved.end(),
                   [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
      return false;
  for (char c : name)
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

}  // namespace mlfx::bundle
