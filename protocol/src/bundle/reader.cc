#include "mlfx/bundle/reader.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "chunk_pipeline.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::bundle {

namespace {

// Errors about the bytes at a file offset of the bundle: the offset travels as data
// (Error::location) and prints as "(layer bundle, file offset 0x...)".
Error bad_at(uint64_t off, const std::string& msg) { return Error(Errc::kBadFormat, msg).at({"bundle", std::nullopt, off}); }
Error corrupt_at(uint64_t off, const std::string& msg) { return Error(Errc::kCorrupt, msg).at({"bundle", std::nullopt, off}); }

Error corrupt(const std::string& msg) { return Error(Errc::kCorrupt, msg); }
Error bad(const std::string& msg) { return Error(Errc::kBadFormat, msg); }

}  // namespace

std::string BundleReader::stream_label(uint32_t index) const {
  if (index < manifest_.streams.size()) return "stream " + manifest_.streams[index].name;
  return "stream #" + std::to_string(index);
}

Result<BundleReader> BundleReader::open(const std::string& path) {
  BundleReader r;
  MLFX_ASSIGN(r.file_, File::open_read(path));
  MLFX_ASSIGN(r.file_size_, r.file_.size());
  if (r.file_size_ == 0) return fail(Errc::kBadFormat, path + " is empty, not an mlfx bundle");
  if (auto st = r.walk(); !st) return fail(std::move(st).error().context(path));
  if (auto st = r.cross_check(); !st) return fail(std::move(st).error().context(path));
  return r;
}

Result<std::string> BundleReader::read_payload(const RecordHeader& h, uint64_t record_off,
                                               size_t limit, const std::string& what) const {
  if (h.payload_size > limit)
    return fail(bad_at(record_off, what + " is implausibly large (" +
                    std::to_string(h.payload_size) + " bytes)"));
  std::string s(h.payload_size, '\0');
  MLFX_TRY(file_.pread_exact(record_off + kRecordHeaderSize, reinterpret_cast<uint8_t*>(s.data()), s.size()));
  return s;
}

Result<RecordHeader> BundleReader::read_record_header(uint64_t off, Bytes* raw) const {
  if (off > file_size_ || file_size_ - off < kRecordHeaderSize)
    return fail(bad_at(off, "truncated: incomplete record header"));
  raw->resize(kRecordHeaderSize);
  MLFX_TRY(file_.pread_exact(off, raw->data(), kRecordHeaderSize));
  MLFX_ASSIGN(RecordHeader h, decode_record_header(*raw, off));
  const std::string type = record_type_name(h.type);
  if (h.payload_size > file_size_ - off - kRecordHeaderSize)
    return fail(bad_at(off, "truncated: " + type + " record needs " +
                    std::to_string(h.payload_size) + " bytes, the file ends " +
                    std::to_string(file_size_ - off - kRecordHeaderSize) + " bytes later"));
  const bool is_stream_record = h.type == uint32_t(RecordType::kChunk) ||
                                h.type == uint32_t(RecordType::kChunkTable);
  if (!is_stream_record && h.stream != kNoStream)
    return fail(bad_at(off, type + " record names a stream"));
  if (h.type != uint32_t(RecordType::kChunk) && (h.flags != 0 || h.sequence != 0))
    return fail(bad_at(off, type + " record has non-zero flags or sequence"));
  return h;
}

Status BundleReader::read_file_header() {
  uint8_t fh[kFileHeaderSize];
  size_t head = static_cast<size_t>(std::min<uint64_t>(file_size_, kFileHeaderSize));
  MLFX_TRY(file_.pread_exact(0, fh, head));
  MLFX_ASSIGN(header_, decode_file_header({fh, head}));
  units_.push_back({0, kFileHeaderSize});
  return {};
}

// A CTBL record at `off` for stream `stream`: its entries, which `check_entry` compares with
// what the caller knows of the chunks.
Status BundleReader::take_chunk_table(const RecordHeader& h, ByteView raw_header, uint64_t off,
                                      uint32_t stream, size_t chunks,
                                      const std::function<Status(size_t, const ChunkEntry&)>& check_entry) {
  const std::string where = "chunk table of stream #" + std::to_string(h.stream);  // at `off`
  if (h.stream != stream) return fail(corrupt_at(off, where + ": out of place (streams reordered or spliced)"));
  if (stream >= kMaxStreams) return fail(bad_at(off, where + ": too many streams"));
  if (chunks > kMaxChunksPerStream)
    return fail(bad_at(off, where + ": more than " + std::to_string(kMaxChunksPerStream) + " chunks"));
  if (h.payload_size != chunks * kChunkTableEntrySize)
    return fail(corrupt_at(off, where + ": lists " + std::to_string(h.payload_size / kChunkTableEntrySize) +
                        " chunks, the stream has " + std::to_string(chunks)));
  MLFX_ASSIGN(std::string payload, read_payload(h, off, kMaxMetadataRecord, "chunk table"));
  StreamLayout layout;
  layout.table_offset = off;
  for (size_t i = 0; i < chunks; ++i) {
    ChunkEntry e = decode_chunk_entry(reinterpret_cast<const uint8_t*>(payload.data()) +
                                      i * kChunkTableEntrySize);
    if (auto st = check_entry(i, e); !st) return fail(std::move(st).error().context(where).at({"bundle", std::nullopt, off}));
    layout.chunks.push_back(e);
  }
  Bytes record(raw_header.begin(), raw_header.end());
  record.insert(record.end(), payload.begin(), payload.end());
  table_sha256_.push_back(crypto::sha256_hex(record));
  streams_.push_back(std::move(layout));
  units_.push_back({off, kRecordHeaderSize + h.payload_size});
  return {};
}

// The records after the streams, MNFT MSIG CUST END, each exactly where the previous ends.
Status BundleReader::take_trailer(uint64_t off) {
  Bytes raw;
  std::string custody_text;
  const RecordType expected[] = {RecordType::kManifest, RecordType::kSignature, RecordType::kCustody,
                                 RecordType::kEnd};
  static const char* names[] = {"the manifest", "the manifest signature", "the custody log",
                                "the end record"};
  for (size_t k = 0; k < 4; ++k) {
    if (off >= file_size_) return fail(bad_at(off, std::string("truncated: the file ends before ") + names[k]));
    MLFX_ASSIGN(RecordHeader h, read_record_header(off, &raw));
    if (h.type != uint32_t(expected[k])) {
      const std::string type = record_type_name(h.type);
      if (h.type == uint32_t(RecordType::kChunk) || h.type == uint32_t(RecordType::kChunkTable))
        return fail(bad_at(off, type + " record after the streams' chunk tables, where " +
                        names[k] + " belongs"));
      if (k > 0 && h.type == uint32_t(RecordType::kManifest)) return fail(bad_at(off, "second manifest"));
      bool known = false;
      for (RecordType t : expected) known |= h.type == uint32_t(t);
      if (!known) return fail(bad_at(off, "unknown record type '" + type + "'"));
      return fail(bad_at(off, type + " record out of place, expected " + names[k]));
    }
    switch (expected[k]) {
      case RecordType::kManifest: {
        MLFX_ASSIGN(manifest_bytes_, read_payload(h, off, kMaxMetadataRecord, "manifest"));
        auto m = Manifest::parse(manifest_bytes_);
        if (!m) return fail(std::move(m).error().context("manifest").at({"bundle", std::nullopt, off}));
        manifest_ = std::move(*m);
        break;
      }
      case RecordType::kSignature: {
        if (h.payload_size != crypto::kSignatureSize)
          return fail(bad_at(off, "signature record is not 64 bytes"));
        MLFX_ASSIGN(std::string sig, read_payload(h, off, crypto::kSignatureSize, "signature"));
        signature_.assign(sig.begin(), sig.end());
        break;
      }
      case RecordType::kCustody: {
        MLFX_ASSIGN(custody_text, read_payload(h, off, kMaxMetadataRecord, "custody log"));
        break;
      }
      default: {  // END
        MLFX_ASSIGN(std::string p, read_payload(h, off, 8, "end record"));
        if (p.size() != 8 || load_le<uint64_t>(reinterpret_cast<const uint8_t*>(p.data())) != off)
          return fail(corrupt_at(off, "end record does not give its own offset"));
        if (off + kRecordHeaderSize + 8 != file_size_)
          return fail(corrupt(std::to_string(file_size_ - off - kRecordHeaderSize - 8) +
                              " bytes after the end record (data appended)"));
      }
    }
    units_.push_back({off, kRecordHeaderSize + h.payload_size});
    off += kRecordHeaderSize + h.payload_size;
  }
  auto log = custody::CustodyLog::parse(custody_text, manifest_.bundle_id_hex());
  if (!log) return fail(std::move(log).error());
  custody_ = std::move(*log);
  return {};
}

Result<BundleReader> BundleReader::open_metadata(const std::string& path, uint64_t file_size,
                                                 const std::vector<uint64_t>& offsets) {
  BundleReader r;
  MLFX_ASSIGN(r.file_, File::open_read(path));
  MLFX_ASSIGN(uint64_t actual, r.file_.size());
  if (actual != file_size)
    return fail(Errc::kInvalidArgument, path + " holds " + std::to_string(actual) + " bytes, not " +
                                            std::to_string(file_size));
  r.file_size_ = file_size;
  if (auto st = r.walk_metadata(offsets); !st) return fail(std::move(st).error().context(path));
  if (auto st = r.cross_check(); !st) return fail(std::move(st).error().context(path));
  return r;
}

// Walks every record header in order and enforces the grammar
//   header (CHNK* CTBL)* MNFT MSIG CUST END <eof>
// with chunks of each stream in order, the last one final, and each chunk table equal to
// the chunks actually present.
Status BundleReader::walk() {
  MLFX_TRY(read_file_header());
  uint32_t stream = 0;
  bool awaiting_table = false;
  std::vector<ChunkEntry> walked;
  uint64_t off = kFileHeaderSize;
  const uint64_t max_chunk_payload = uint64_t(header_.chunk_size) + crypto::kTagSize;
  Bytes raw;

  while (off < file_size_) {
    MLFX_ASSIGN(RecordHeader h, read_record_header(off, &raw));
    if (h.type == uint32_t(RecordType::kChunk)) {
      const std::string where = "stream #" + std::to_string(h.stream) + ", chunk " +
                                std::to_string(h.sequence);  // at `off`
      if (h.stream != stream)
        return fail(corrupt_at(off, where + ": found where stream #" + std::to_string(stream) +
                            " was expected (streams reordered or spliced)"));
      if (awaiting_table)
        return fail(corrupt_at(off, where + ": chunk after the final chunk of its stream (chunk duplicated or spliced)"));
      if (h.sequence != walked.size())
        return fail(corrupt_at(off, where + ": expected chunk " + std::to_string(walked.size()) +
                            " (chunks reordered, duplicated or removed)"));
      if (h.flags & ~kChunkFinal) return fail(bad_at(off, where + ": unknown flags"));
      const bool final = h.flags & kChunkFinal;
      if (h.payload_size < crypto::kTagSize || h.payload_size > max_chunk_payload ||
          (!final && h.payload_size != max_chunk_payload))
        return fail(bad_at(off, where + ": impossible chunk size " + std::to_string(h.payload_size)));
      if (stream >= kMaxStreams) return fail(bad_at(off, where + ": too many streams"));
      if (walked.size() >= kMaxChunksPerStream)
        return fail(bad_at(off, where + ": more than " + std::to_string(kMaxChunksPerStream) + " chunks in a stream"));
      ChunkEntry e;
      e.record_offset = off;
      e.plaintext_size = static_cast<uint32_t>(h.payload_size - crypto::kTagSize);
      e.flags = h.flags;
      walked.push_back(e);
      awaiting_table = final;
    } else if (h.type == uint32_t(RecordType::kChunkTable)) {
      if (!awaiting_table)
        return fail(corrupt_at(off, "chunk table of stream #" + std::to_string(h.stream) +
                            ": stream has no final chunk (chunks removed or truncated)"));
      MLFX_TRY(take_chunk_table(h, raw, off, stream, walked.size(), [&](size_t i, const ChunkEntry& e) -> Status {
        if (e.record_offset != walked[i].record_offset ||
            e.plaintext_size != walked[i].plaintext_size || e.flags != walked[i].flags)
          return fail(corrupt("entry " + std::to_string(i) + " does not describe the chunk found in the file"));
        return {};
      }));
      walked.clear();
      awaiting_table = false;
      ++stream;
    } else {
      if (!walked.empty())
        return fail(corrupt("stream #" + std::to_string(stream) +
                            " ends without its final chunk and chunk table (truncated?)"));
      return take_trailer(off);
    }
    off += kRecordHeaderSize + h.payload_size;
  }
  return fail(bad_at(off, "truncated: the file ends before the manifest"));
}

// Like walk(), but reads only the metadata units at `offsets`; each stream's chunk table must
// describe chunks that tile the gap before it exactly, so the chunk records need not be there.
Status BundleReader::walk_metadata(const std::vector<uint64_t>& offsets) {
  if (offsets.empty() || offsets[0] != 0) return fail(bad("the metadata units must start with the file header"));
  MLFX_TRY(read_file_header());
  uint64_t pos = kFileHeaderSize;
  uint32_t stream = 0;
  Bytes raw;
  size_t k = 1;
  for (; k < offsets.size(); ++k) {
    const uint64_t off = offsets[k];
    if (off < pos) return fail(bad_at(off, "metadata unit overlaps the one before it"));
    MLFX_ASSIGN(RecordHeader h, read_record_header(off, &raw));
    if (h.type != uint32_t(RecordType::kChunkTable)) break;
    const uint64_t n = h.payload_size / kChunkTableEntrySize;
    if (n == 0 || h.payload_size % kChunkTableEntrySize != 0)
      return fail(bad_at(off, "chunk table of stream #" + std::to_string(h.stream) + " has no whole entries"));
    uint64_t cursor = pos;
    MLFX_TRY(take_chunk_table(h, raw, off, stream, n, [&](size_t i, const ChunkEntry& e) -> Status {
      const bool last = i + 1 == n;
      const std::string entry = "entry " + std::to_string(i);
      if (e.record_offset != cursor)
        return fail(corrupt_at(e.record_offset, entry + " places its chunk here, where offset " +
                                                    hex_address(cursor) + " is next"));
      if (e.flags != (last ? kChunkFinal : 0u))
        return fail(corrupt(entry + ": the final flag must be on the last chunk only"));
      if (e.plaintext_size > header_.chunk_size || (!last && e.plaintext_size != header_.chunk_size))
        return fail(bad(entry + ": impossible chunk size " + std::to_string(e.plaintext_size)));
      cursor += kRecordHeaderSize + e.plaintext_size + crypto::kTagSize;
      return {};
    }));
    if (cursor != off)
      return fail(corrupt_at(cursor, "the chunks of stream #" + std::to_string(stream) +
                                         " end here, not at their chunk table (offset " + hex_address(off) + ")"));
    pos = off + kRecordHeaderSize + h.payload_size;
    ++stream;
  }
  if (k == offsets.size() || offsets[k] != pos)
    return fail(bad_at(pos, "the manifest must follow the last chunk table, here"));
  MLFX_TRY(take_trailer(pos));
  std::vector<uint64_t> found;
  for (const Unit& u : units_) found.push_back(u.offset);
  if (found != offsets) return fail(bad("the metadata units are not exactly the bundle's non-chunk records"));
  return {};
}

Status BundleReader::cross_check() {
  const Manifest& m = manifest_;
  if (m.bundle_id != header_.bundle_id)
    return fail(corrupt("manifest is for bundle " + m.bundle_id_hex() + " but the file header says " +
                        to_hex(header_.bundle_id) + " (manifest spliced from another bundle)"));
  if (m.format_major != header_.major || m.format_minor != header_.minor)
    return fail(corrupt("manifest and file header disagree on the format version"));
  if (m.chunk_size != header_.chunk_size)
    return fail(corrupt("manifest and file header disagree on the chunk size"));
  if (m.streams.size() != streams_.size())
    return fail(corrupt("manifest lists " + std::to_string(m.streams.size()) + " streams, the file holds " +
                        std::to_string(streams_.size())));
  for (size_t i = 0; i < streams_.size(); ++i) {
    const StreamInfo& s = m.streams[i];
    uint64_t size = 0;
    for (const auto& c : streams_[i].chunks) size += c.plaintext_size;
    if (s.chunks != streams_[i].chunks.size() || s.size != size)
      return fail(corrupt("stream " + s.name + ": manifest says " + std::to_string(s.chunks) + " chunks / " +
                          std::to_string(s.size) + " bytes, the file holds " +
                          std::to_string(streams_[i].chunks.size()) + " / " + std::to_string(size)));
    if (s.chunk_table_sha256 != table_sha256_[i])
      return fail(corrupt_at(streams_[i].table_offset, "stream " + s.name + ": chunk table" +
                          " does not match the manifest (chunk table altered or swapped)"));
  }
  return {};
}

Result<std::string> BundleReader::digest() const {
  MLFX_ASSIGN(crypto::Hasher h, crypto::Hasher::create(crypto::HashAlg::kSha256));
  Bytes buf;
  for (const Unit& u : units_) {
    buf.resize(u.size);
    MLFX_TRY(file_.pread_exact(u.offset, buf.data(), buf.size()));
    h.update(buf);
  }
  MLFX_ASSIGN(Bytes d, h.finish());
  return to_hex(d);
}

Status BundleReader::verify_signature() const {
  auto key = crypto::VerifyKey::from_raw(manifest_.device.public_key);
  if (!key) return fail(corrupt("manifest: device public key is invalid"));
  if (key->fingerprint() != manifest_.device.key_fingerprint)
    return fail(corrupt("manifest: device key fingerprint does not match the device public key"));
  if (!key->verify(manifest_signing_message(manifest_bytes_), signature_))
    return fail(corrupt("manifest signature does not verify with the device key " +
                        key->fingerprint() + " (manifest or signature altered)"));
  return {};
}

namespace {

// Chunk records are checked and decrypted on every core (chunk_pipeline.h), each read whole
// into a buffer of its own: one per thread, and two for the chunks the in-order hashes and
// sink work on meanwhile. Memory stays bounded, as with a serial loop's one buffer.
constexpr size_t kRecordBuffersBesideWorkers = 2;

size_t record_buffers(unsigned workers, size_t chunks) {
  return std::max<size_t>(1, std::min<size_t>(chunks, workers + kRecordBuffersBesideWorkers));
}

}  // namespace

// Reads the record of chunk `i` of `stream` into `buf` and checks it against its entry in the
// signed chunk table. Returns the record's size.
Result<size_t> BundleReader::read_checked_record(uint32_t stream, size_t i, uint8_t* buf) const {
  const ChunkEntry& c = streams_[stream].chunks[i];
  const size_t n = kRecordHeaderSize + c.plaintext_size + crypto::kTagSize;
  MLFX_TRY(file_.pread_exact(c.record_offset, buf, n));
  Bytes digest = crypto::sha256({buf, n});
  if (std::memcmp(digest.data(), c.record_sha256.data(), 32) != 0)
    return fail(corrupt_at(c.record_offset, stream_label(stream) + ", chunk " + std::to_string(i) +
                        ": SHA-256 does not match the signed chunk table (chunk altered)"));
  return n;
}

Status BundleReader::verify_chunks(Progress* progress) const {
  struct Chunk {
    uint32_t stream = 0;
    size_t index = 0;
  };
  std::vector<Chunk> order;
  for (size_t s = 0; s < streams_.size(); ++s)
    for (size_t i = 0; i < streams_[s].chunks.size(); ++i) order.push_back({uint32_t(s), i});
  const unsigned workers = detail::default_workers(1);
  const size_t slots = record_buffers(workers, order.size());
  // Buffers as large as the largest record, not the chunk size: a small bundle costs no
  // megabytes of page faults.
  size_t largest = 0;
  for (const Chunk& c : order) largest = std::max<size_t>(largest, streams_[c.stream].chunks[c.index].plaintext_size);
  std::vector<Bytes> bufs;
  for (size_t k = 0; k < slots; ++k) bufs.emplace_back(kRecordHeaderSize + largest + crypto::kTagSize);
  std::vector<Chunk> in_slot(slots);
  std::vector<size_t> record_size(slots);
  detail::ChunkPipeline pipeline(
      {{{false, [&](size_t k, unsigned) -> Status {
          MLFX_ASSIGN(record_size[k], read_checked_record(in_slot[k].stream, in_slot[k].index, bufs[k].data()));
          return {};
        }}},
       {{true, [&](size_t k, unsigned) -> Status {
          if (progress) progress->advance(record_size[k]);
          return {};
        }}}},
      slots, workers);
  for (size_t k = 0; k < slots; ++k) pipeline.add_free_slot(k);
  for (const Chunk& c : order) {
    auto k = pipeline.acquire();
    if (!k) break;  // drain() reports the failure of the earliest chunk
    in_slot[*k] = c;
    if (!pipeline.submit(*k)) break;
  }
  return pipeline.drain();
}

Result<custody::ChainReport> BundleReader::verify_custody() const {
  auto report = custody_.verify();
  if (!report) return fail(std::move(report).error().context("custody log"));
  const auto& events = custody_.events();
  // A bundle carries exactly the device's own events; later events (shipped, received,
  // opened...) extend the chain outside the immutable bundle.
  if (report->events != 2 || report->types[0] != "acquired" || report->types[1] != "sealed")
    return fail(corrupt("custody log must hold exactly the device's 'acquired' and 'sealed' events, "
                        "found " + std::to_string(report->events) + " events"));
  for (size_t i = 0; i < 2; ++i)
    if (report->fingerprints[i] != manifest_.device.key_fingerprint)
      return fail(corrupt("custody log: event " + std::to_string(i) + " is not signed by the device key"));
  const auto& details = events[1]["details"];
  const std::string want = crypto::sha256_hex(as_bytes(manifest_bytes_));
  if (!details.is_object() || !details.contains("manifest_sha256") ||
      details["manifest_sha256"] != want)
    return fail(corrupt("custody log: the 'sealed' event does not refer to this manifest"));
  return report;
}

Result<SecretBytes> BundleReader::unwrap_data_key(const crypto::BoxSecretKey& lab) const {
  const std::string& fp = lab.public_key().fingerprint();
  for (const auto& w : manifest_.recipients) {
    if (w.recipient_fingerprint != fp) continue;
    MLFX_ASSIGN(SecretBytes key, crypto::unwrap_data_key(lab, w, manifest_.bundle_id));
    MLFX_ASSIGN(Bytes commitment, key_commitment(key.view(), manifest_.bundle_id));
    if (!equal_ct(commitment, manifest_.key_commitment))
      return fail(corrupt("the data key wrapped for " + fp + " does not match the manifest's key commitment"));
    return key;
  }
  std::string list;
  for (const auto& w : manifest_.recipients) list += " " + w.recipient_fingerprint;
  return fail(Errc::kNotFound, "the bundle is not encrypted to lab key " + fp +
                                   "; its recipients are:" + list);
}

Status BundleReader::decrypt_stream(size_t index, ByteView data_key,
                                    const std::function<Status(ByteView)>& sink,
                                    Progress* progress) const {
  return decrypt(index, data_key, sink, {}, progress);
}

Status BundleReader::decrypt_stream_at(size_t index, ByteView data_key,
                                       const std::function<Status(uint64_t, ByteView)>& sink,
                                       Progress* progress) const {
  return decrypt(index, data_key, {}, sink, progress);
}

// Each chunk on its own, on any thread: its record against the signed hash, then its tag;
// decrypted in place. Then, in order, the stream's hashes (one thread each) and the ordered
// sink; a positioned sink takes chunks in any order, beside the hashes.
Status BundleReader::decrypt(size_t index, ByteView data_key, const std::function<Status(ByteView)>& in_order,
                             const std::function<Status(uint64_t, ByteView)>& at_offset,
                             Progress* progress) const {
  if (index >= streams_.size()) return fail(Errc::kInvalidArgument, "no such stream");
  const StreamInfo& info = manifest_.streams[index];
  const std::string label = stream_label(uint32_t(index));
  MLFX_ASSIGN(crypto::Hasher sha256, crypto::Hasher::create(crypto::HashAlg::kSha256));
  std::optional<crypto::Hasher> md5, sha1;
  if (info.md5) {
    MLFX_ASSIGN(md5, crypto::Hasher::create(crypto::HashAlg::kMd5));
  }
  if (info.sha1) {
    MLFX_ASSIGN(sha1, crypto::Hasher::create(crypto::HashAlg::kSha1));
  }
  const auto& chunks = streams_[index].chunks;
  const unsigned workers = detail::default_workers(1);
  std::vector<crypto::Aes256Gcm> gcms;
  for (unsigned w = 0; w < workers; ++w) {
    MLFX_ASSIGN(crypto::Aes256Gcm gcm, crypto::Aes256Gcm::create(data_key));
    gcms.push_back(std::move(gcm));
  }
  // A record's buffer holds its plaintext once decrypted: out of core dumps, locked where
  // RLIMIT_MEMLOCK allows.
  const size_t slots = record_buffers(workers, chunks.size());
  std::vector<SecureBuffer> bufs;
  size_t largest = 0;  // the largest record of this stream, not the chunk size
  for (const ChunkEntry& c : chunks) largest = std::max<size_t>(largest, c.plaintext_size);
  for (size_t k = 0; k < slots; ++k) {
    MLFX_ASSIGN(SecureBuffer b, SecureBuffer::allocate(kRecordHeaderSize + largest + crypto::kTagSize));
    bufs.push_back(std::move(b));
  }
  std::vector<size_t> in_slot(slots);  // chunk index
  std::vector<uint64_t> chunk_offset(chunks.size());  // in the stream
  for (size_t i = 1; i < chunks.size(); ++i) chunk_offset[i] = chunk_offset[i - 1] + chunks[i - 1].plaintext_size;
  auto plaintext = [&](size_t k) { return ByteView(bufs[k].data() + kRecordHeaderSize, chunks[in_slot[k]].plaintext_size); };

  auto open_chunk = [&](size_t k, unsigned worker) -> Status {
    const size_t i = in_slot[k];
    const ChunkEntry& c = chunks[i];
    uint8_t* rec = bufs[k].data();
    MLFX_TRY(read_checked_record(uint32_t(index), i, rec));
    MLFX_ASSIGN(bool ok, gcms[worker].open(chunk_nonce(uint32_t(index), i),
                                           chunk_aad(header_.bundle_id, {rec, kRecordHeaderSize}),
                                           {rec + kRecordHeaderSize, c.plaintext_size},
                                           {rec + kRecordHeaderSize + c.plaintext_size, crypto::kTagSize},
                                           rec + kRecordHeaderSize));
    if (!ok) return fail(corrupt_at(c.record_offset, label + ", chunk " + std::to_string(i) +
                                 ": authentication tag mismatch"));
    return {};
  };
  auto running_hash = [&](crypto::Hasher& h) {
    return detail::PipelineTask{true, [&h, &plaintext](size_t k, unsigned) -> Status {
                                  h.update(plaintext(k));
                                  return {};
                                }};
  };
  std::vector<detail::PipelineTask> then{running_hash(sha256)};
  if (md5) then.push_back(running_hash(*md5));
  if (sha1) then.push_back(running_hash(*sha1));
  if (at_offset)
    then.push_back({false, [&](size_t k, unsigned) { return at_offset(chunk_offset[in_slot[k]], plaintext(k)); }});
  then.push_back({true, [&](size_t k, unsigned) -> Status {
                    if (in_order) MLFX_TRY(in_order(plaintext(k)));
                    if (progress) progress->advance(plaintext(k).size());
                    return {};
                  }});
  {
    detail::ChunkPipeline pipeline({{{false, open_chunk}}, std::move(then)}, slots, workers);
    for (size_t k = 0; k < slots; ++k) pipeline.add_free_slot(k);
    for (size_t i = 0; i < chunks.size(); ++i) {
      auto k = pipeline.acquire();
      if (!k) break;  // drain() reports the failure of the earliest chunk
      in_slot[*k] = i;
      if (!pipeline.submit(*k)) break;
    }
    MLFX_TRY(pipeline.drain());
  }
  MLFX_ASSIGN(Bytes got, sha256.finish());
  if (to_hex(got) != info.sha256)
    return fail(corrupt(label + ": SHA-256 of the decrypted stream does not match the manifest"));
  if (md5) {
    MLFX_ASSIGN(Bytes m, md5->finish());
    if (to_hex(m) != *info.md5) return fail(corrupt(label + ": MD5 does not match the manifest"));
  }
  if (sha1) {
    MLFX_ASSIGN(Bytes s, sha1->finish());
    if (to_hex(s) != *info.sha1) return fail(corrupt(label + ": SHA-1 does not match the manifest"));
  }
  return {};
}

}  // namespace mlfx::bundle
