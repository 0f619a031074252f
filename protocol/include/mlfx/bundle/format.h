// The byte layout of an mlfx evidence bundle (*.mlfx). Specified in protocol/doc/bundle-format.md;
// every constant here is named there.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx::bundle {

inline constexpr std::array<uint8_t, 8> kFileMagic = {0x89, 'M', 'L', 'F', 'X', '\r', '\n', 0x1a};
inline constexpr uint16_t kFormatMajor = 1;
inline constexpr uint16_t kFormatMinor = 0;
inline constexpr size_t kFileHeaderSize = 64;
inline constexpr size_t kRecordHeaderSize = 32;
inline constexpr size_t kBundleIdSize = 16;
inline constexpr uint32_t kDefaultChunkSize = 4u << 20;
inline constexpr uint32_t kMinChunkSize = 4u << 10;
inline constexpr uint32_t kMaxChunkSize = 64u << 20;
inline constexpr uint32_t kNoStream = 0xffffffffu;
inline constexpr uint32_t kMaxStreams = 1024;
inline constexpr size_t kMaxMetadataRecord = 64u << 20;  // manifest, custody log, chunk table
inline constexpr size_t kChunkTableEntrySize = 48;
// A stream's chunk table must fit a metadata record: at the default 4 MiB chunks that is
// 5.3 TiB per stream, at the minimum 4 KiB chunks 5.3 GiB.
inline constexpr uint64_t kMaxChunksPerStream = kMaxMetadataRecord / kChunkTableEntrySize;

// Domain-separation prefixes for everything that is signed or authenticated.
inline constexpr std::string_view kManifestSignatureContext = "mlfx-bundle-v1 manifest\n";
inline constexpr std::string_view kChunkAadContext = "mlfx-bundle-v1 chunk\n";
inline constexpr std::string_view kKeyCommitmentContext = "mlfx-bundle-v1 key commitment\n";

// Record types are four ASCII characters, stored as a little-endian u32.
enum class RecordType : uint32_t {
  kChunk = 0x4b4e4843,       // "CHNK" sealed stream data
  kChunkTable = 0x4c425443,  // "CTBL" offsets and hashes of a stream's chunks
  kManifest = 0x54464e4d,    // "MNFT" manifest (JSON)
  kSignature = 0x4749534d,   // "MSIG" Ed25519 signature of the manifest
  kCustody = 0x54535543,     // "CUST" custody log (JSON lines)
  kEnd = 0x00444e45,         // "END\0" end of bundle
};
std::string record_type_name(uint32_t type);

inline constexpr uint32_t kChunkFinal = 1;  // flag: last chunk of its stream

using BundleId = std::array<uint8_t, kBundleIdSize>;

struct FileHeader {
  uint16_t major = kFormatMajor;
  uint16_t minor = kFormatMinor;
  BundleId bundle_id{};
  uint32_t chunk_size = kDefaultChunkSize;
};

struct RecordHeader {
  uint32_t type = 0;
  uint32_t flags = 0;
  uint64_t payload_size = 0;
  uint32_t stream = kNoStream;
  uint64_t sequence = 0;  // chunk index for CHNK, 0 otherwise
};

std::array<uint8_t, kFileHeaderSize> encode_file_header(const FileHeader& h);
Result<FileHeader> decode_file_header(ByteView bytes);

std::array<uint8_t, kRecordHeaderSize> encode_record_header(const RecordHeader& h);
Result<RecordHeader> decode_record_header(ByteView bytes, uint64_t file_offset);

// The GCM nonce of a chunk: stream index (u32) || chunk index (u64), unique under the
// bundle's fresh data key.
std::array<uint8_t, 12> chunk_nonce(uint32_t stream, uint64_t chunk);
// The GCM AAD of a chunk: context || bundle id || the chunk's record header.
Bytes chunk_aad(const BundleId& id, ByteView record_header);

// One entry of a CTBL record.
struct ChunkEntry {
  uint64_t record_offset = 0;
  uint32_t plaintext_size = 0;
  uint32_t flags = 0;
  std::array<uint8_t, 32> record_sha256{};  // SHA-256 of the whole CHNK record
};
void encode_chunk_entry(const ChunkEntry& e, uint8_t* out);
ChunkEntry decode_chunk_entry(const uint8_t* in);

// Names of the files `mlfx bundle open` writes beside the streams.
inline constexpr std::string_view kReservedStreamNames[] = {"manifest.json", "manifest.sig",
                                                           "SHA256SUMS", "custody.jsonl"};
// Stream names become file names when a bundle is opened: [A-Za-z0-9._-], 1..64, no leading
// dot, none of kReservedStreamNames.
bool is_valid_stream_name(std::string_view name);

}  // namespace mlfx::bundle
