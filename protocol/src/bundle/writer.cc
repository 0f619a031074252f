#include "mlfx/bundle/writer.h"

#include <cstring>
#include <optional>

#include "mlfx/base/clock.h"
#include "mlfx/base/host.h"
#include "mlfx/base/version.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::bundle {

struct BundleWriter::Impl {
  File out;
  const crypto::SigningKey* device = nullptr;
  SealParams params;
  Manifest manifest;
  crypto::Aes256Gcm gcm;
  uint64_t offset = 0;  // bytes written so far

  // The current stream.
  bool in_stream = false;
  StreamInfo stream;
  std::vector<ChunkEntry> table;
  crypto::Hasher sha256;
  std::optional<crypto::Hasher> md5, sha1;
  Bytes plain, spare, record;  // chunk buffers: plaintext, read-ahead, sealed record
  size_t fill = 0;

  Impl(File f, crypto::Aes256Gcm g, crypto::Hasher h)
      : out(std::move(f)), gcm(std::move(g)), sha256(std::move(h)) {}

  Status write_record(const RecordHeader& h, ByteView payload) {
    auto hdr = encode_record_header(h);
    MLFX_TRY(out.write_all(hdr));
    MLFX_TRY(out.write_all(payload));
    offset += hdr.size() + payload.size();
    return {};
  }

  // Seals plain[0..fill) as chunk table.size() of the current stream.
  Status seal_chunk(bool final) {
    const uint64_t index = table.size();
    if (index >= kMaxChunksPerStream)
      return fail(Errc::kInvalidArgument,
                  "stream " + stream.name + " exceeds " + std::to_string(kMaxChunksPerStream) +
                      " chunks of " + std::to_string(plain.size()) + " bytes; seal it with a larger chunk size");
    RecordHeader h{static_cast<uint32_t>(RecordType::kChunk), final ? kChunkFinal : 0,
                   fill + crypto::kTagSize, stream.index, index};
    auto hdr = encode_record_header(h);
    std::memcpy(record.data(), hdr.data(), hdr.size());
    ByteView pt(plain.data(), fill);
    sha256.update(pt);
    if (md5) md5->update(pt);
    if (sha1) sha1->update(pt);
    auto nonce = chunk_nonce(stream.index, index);
    uint8_t* ct = record.data() + kRecordHeaderSize;
    MLFX_TRY(gcm.seal(nonce, chunk_aad(manifest.bundle_id, hdr), pt, ct, ct + fill));
    const size_t record_size = kRecordHeaderSize + fill + crypto::kTagSize;
    ChunkEntry e;
    e.record_offset = offset;
    e.plaintext_size = static_cast<uint32_t>(fill);
    e.flags = h.flags;
    Bytes digest = crypto::sha256({record.data(), record_size});
    std::memcpy(e.record_sha256.data(), digest.data(), 32);
    MLFX_TRY(out.write_all({record.data(), record_size}));
    offset += record_size;
    table.push_back(e);
    stream.size += fill;
    fill = 0;
    return {};
  }
};

BundleWriter::BundleWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BundleWriter::BundleWriter(BundleWriter&&) noexcept = default;
BundleWriter::~BundleWriter() = default;

Result<BundleWriter> BundleWriter::create(File out, const crypto::SigningKey& device,
                                          const std::vector<crypto::BoxPublicKey>& recipients,
                                          SealParams params) {
  if (recipients.empty())
    return fail(Errc::kInvalidArgument, "at least one lab recipient key is needed");
  if (params.chunk_size < kMinChunkSize || params.chunk_size > kMaxChunkSize)
    return fail(Errc::kInvalidArgument, "chunk size must be between 4 KiB and 64 MiB");
  SecretBytes data_key = crypto::random_secret(crypto::kDataKeySize);
  MLFX_ASSIGN(crypto::Aes256Gcm gcm, crypto::Aes256Gcm::create(data_key.view()));
  MLFX_ASSIGN(crypto::Hasher sha, crypto::Hasher::create(crypto::HashAlg::kSha256));
  auto impl = std::make_unique<Impl>(std::move(out), std::move(gcm), std::move(sha));
  impl->device = &device;
  Manifest& m = impl->manifest;
  Bytes id = crypto::random_bytes(kBundleIdSize);
  std::memcpy(m.bundle_id.data(), id.data(), kBundleIdSize);
  m.chunk_size = params.chunk_size;
  m.case_id = params.case_id;
  m.note = params.note;
  HostIdentity host = local_host_identity();
  m.device.id = params.device_id.empty() ? host.hostname : params.device_id;
  m.device.hostname = host.hostname;
  m.device.machine_id = host.machine_id;
  m.device.key_fingerprint = device.public_key().fingerprint();
  m.device.public_key = device.public_key().raw();
  m.tool = {kToolName, kToolVersion, params.command, params.tool_parameters};
  m.created_utc = utc_timestamp();
  m.context = params.context;
  MLFX_ASSIGN(m.key_commitment, key_commitment(data_key.view(), m.bundle_id));
  for (const auto& r : recipients) {
    for (const auto& earlier : m.recipients)
      if (earlier.recipient_fingerprint == r.fingerprint())
        return fail(Errc::kInvalidArgument, "recipient " + r.fingerprint() + " given twice");
    MLFX_ASSIGN(crypto::WrappedKey w, crypto::wrap_data_key(r, data_key.view(), m.bundle_id));
    m.recipients.push_back(std::move(w));
  }
  impl->plain.resize(params.chunk_size);
  impl->spare.resize(params.chunk_size);
  impl->record.resize(kRecordHeaderSize + params.chunk_size + crypto::kTagSize);
  impl->params = std::move(params);

  FileHeader fh;
  fh.bundle_id = m.bundle_id;
  fh.chunk_size = m.chunk_size;
  auto hdr = encode_file_header(fh);
  MLFX_TRY(impl->out.write_all(hdr));
  impl->offset = hdr.size();
  return BundleWriter(std::move(impl));
}

const BundleId& BundleWriter::bundle_id() const { return impl_->manifest.bundle_id; }
uint64_t BundleWriter::bytes_written() const { return impl_->offset; }

Status BundleWriter::begin_stream(const std::string& name, const std::string& source) {
  Impl& s = *impl_;
  if (s.in_stream) return fail(Errc::kInvalidArgument, "previous stream not ended");
  if (!is_valid_stream_name(name))
    return fail(Errc::kInvalidArgument,
                "invalid stream name '" + name + "' (use 1-64 of A-Z a-z 0-9 . _ -, no leading dot)");
  if (s.manifest.find_stream(name))
    return fail(Errc::kInvalidArgument, "duplicate stream name '" + name + "'");
  if (s.manifest.streams.size() >= kMaxStreams)
    return fail(Errc::kInvalidArgument, "too many streams");
  s.stream = StreamInfo{};
  s.stream.index = static_cast<uint32_t>(s.manifest.streams.size());
  s.stream.name = name;
  s.stream.source = source;
  s.stream.started_utc = utc_timestamp();
  s.table.clear();
  s.fill = 0;
  if (s.params.legacy_hashes) {
    MLFX_ASSIGN(s.md5, crypto::Hasher::create(crypto::HashAlg::kMd5));
    MLFX_ASSIGN(s.sha1, crypto::Hasher::create(crypto::HashAlg::kSha1));
  } else {
    s.md5.reset();
    s.sha1.reset();
  }
  s.in_stream = true;
  return {};
}

Status BundleWriter::write(ByteView data) {
  Impl& s = *impl_;
  if (!s.in_stream) return fail(Errc::kInvalidArgument, "no stream begun");
  while (!data.empty()) {
    // A full buffer is sealed only once more data proves it is not the last chunk.
    if (s.fill == s.plain.size()) MLFX_TRY(s.seal_chunk(false));
    size_t n = std::min(data.size(), s.plain.size() - s.fill);
    std::memcpy(s.plain.data() + s.fill, data.data(), n);
    s.fill += n;
    data = data.subspan(n);
  }
  return {};
}

Status BundleWriter::write_from(File& in, Progress* progress) {
  Impl& s = *impl_;
  if (!s.in_stream) return fail(Errc::kInvalidArgument, "no stream begun");
  while (true) {
    if (s.fill == s.plain.size()) {
      // Read ahead into the spare buffer to learn whether the full one is the last.
      MLFX_ASSIGN(size_t n, in.read_full(s.spare.data(), s.spare.size()));
      if (n == 0) return {};
      MLFX_TRY(s.seal_chunk(false));
      std::swap(s.plain, s.spare);
      s.fill = n;
      if (progress) progress->advance(n);
      continue;
    }
    MLFX_ASSIGN(size_t n, in.read_full(s.plain.data() + s.fill, s.plain.size() - s.fill));
    if (n == 0) return {};
    s.fill += n;
    if (progress) progress->advance(n);
  }
}

Status BundleWriter::end_stream() {
  Impl& s = *impl_;
  if (!s.in_stream) return fail(Errc::kInvalidArgument, "no stream begun");
  MLFX_TRY(s.seal_chunk(true));
  s.stream.finished_utc = utc_timestamp();
  s.stream.chunks = s.table.size();
  MLFX_ASSIGN(Bytes sha, s.sha256.finish());
  s.stream.sha256 = to_hex(sha);
  if (s.md5) {
    MLFX_ASSIGN(Bytes md5, s.md5->finish());
    MLFX_ASSIGN(Bytes sha1, s.sha1->finish());
    s.stream.md5 = to_hex(md5);
    s.stream.sha1 = to_hex(sha1);
  }
  Bytes payload(s.table.size() * kChunkTableEntrySize);
  for (size_t i = 0; i < s.table.size(); ++i)
    encode_chunk_entry(s.table[i], payload.data() + i * kChunkTableEntrySize);
  RecordHeader h{static_cast<uint32_t>(RecordType::kChunkTable), 0, payload.size(), s.stream.index, 0};
  auto hdr = encode_record_header(h);
  Bytes record(hdr.begin(), hdr.end());
  record.insert(record.end(), payload.begin(), payload.end());
  s.stream.chunk_table_sha256 = crypto::sha256_hex(record);
  MLFX_TRY(s.write_record(h, payload));
  s.manifest.streams.push_back(s.stream);
  s.in_stream = false;
  return {};
}

Result<Manifest> BundleWriter::finish(json::Json acquisition) {
  Impl& s = *impl_;
  if (s.in_stream) return fail(Errc::kInvalidArgument, "stream not ended");
  Manifest& m = s.manifest;
  m.sealed_utc = utc_timestamp();
  const std::string manifest_bytes = m.serialize();
  MLFX_TRY(s.write_record({static_cast<uint32_t>(RecordType::kManifest), 0, manifest_bytes.size(), kNoStream, 0},
                          as_bytes(manifest_bytes)));
  MLFX_ASSIGN(Bytes sig, s.device->sign(manifest_signing_message(manifest_bytes)));
  MLFX_TRY(s.write_record({static_cast<uint32_t>(RecordType::kSignature), 0, sig.size(), kNoStream, 0}, sig));

  // The chain of custody starts with the acquisition and the seal, both by the device.
  HostIdentity host = local_host_identity();
  custody::Actor actor{"device", m.device.id, host.hostname, host.user};
  custody::CustodyLog log(m.bundle_id_hex());
  json::Json streams = json::Json::array();
  for (const auto& st : m.streams)
    streams.push_back({{"name", st.name}, {"source", st.source}, {"size", st.size},
                       {"sha256", st.sha256}, {"started_utc", st.started_utc},
                       {"finished_utc", st.finished_utc}});
  acquisition["streams"] = streams;
  MLFX_TRY(log.append("acquired", actor, *s.device, m.tool.parameters, std::move(acquisition)));
  json::Json recipients = json::Json::array();
  for (const auto& r : m.recipients) recipients.push_back(r.recipient_fingerprint);
  MLFX_TRY(log.append("sealed", actor, *s.device, json::Json::object(),
                      {{"manifest_sha256", crypto::sha256_hex(as_bytes(manifest_bytes))},
                       {"recipients", recipients}}));
  const std::string custody = log.serialize();
  MLFX_TRY(s.write_record({static_cast<uint32_t>(RecordType::kCustody), 0, custody.size(), kNoStream, 0},
                          as_bytes(custody)));
  uint8_t end_payload[8];
  store_le<uint64_t>(end_payload, s.offset);
  MLFX_TRY(s.write_record({static_cast<uint32_t>(RecordType::kEnd), 0, 8, kNoStream, 0}, end_payload));
  MLFX_TRY(s.out.sync());
  MLFX_TRY(s.out.close());
  return m;
}

}  // namespace mlfx::bundle
