#include "mlfx/bundle/writer.h"

#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "chunk_pipeline.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/host.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/version.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::bundle {
namespace {

constexpr size_t kBufferAlign = 2u << 20;  // a huge page, should the policy ask for them
// Beside one chunk per pipeline thread: the one being filled, the full one waiting for more
// data, and one each for the in-order hash and write.
constexpr size_t kSlotsBesideWorkers = 4;
constexpr int kMadvPopulateWrite = 23;  // <linux/mman.h>, absent from older libc headers

// One chunk's memory: plaintext of the evidence, kept out of core dumps and locked where
// RLIMIT_MEMLOCK allows (SecureBuffer).
class ChunkMemory {
 public:
  static Result<ChunkMemory> allocate(size_t size, SealingPolicy& policy) {
    MLFX_ASSIGN(SecureBuffer b, SecureBuffer::allocate(size, kBufferAlign, [&policy](void* p, size_t n) {
                  policy.chunk_buffer_mapped(p, n);
                }));
    return ChunkMemory(std::move(b));
  }
  uint8_t* data() const { return buf_.data(); }
  // Faults every page in now rather than on first use (MADV_POPULATE_WRITE is Linux 5.14+).
  void populate() {
    if (buf_.locked() || madvise(buf_.data(), buf_.size(), kMadvPopulateWrite) == 0) return;
    for (size_t at = 0; at < buf_.size(); at += 4096) buf_.data()[at] = 0;
  }

 private:
  explicit ChunkMemory(SecureBuffer b) : buf_(std::move(b)) {}
  SecureBuffer buf_;
};

// A chunk on its way: filled by the caller, its plaintext hashed, encrypted in place and its
// record hashed, written.
struct Slot {
  Slot(size_t i, ChunkMemory m) : id(i), mem(std::move(m)) {}
  size_t id;  // in the pipeline
  ChunkMemory mem;
  size_t fill = 0;
  uint32_t stream = 0;
  uint64_t index = 0;
  bool final = false;
  std::array<uint8_t, kRecordHeaderSize> header{};
  std::array<uint8_t, crypto::kTagSize> tag{};
  std::array<uint8_t, 32> record_sha256{};
};

SealingPolicy& no_policy() {
  static SealingPolicy none;
  return none;
}

// write(2) of every byte of `iov`, resuming after short writes.
Status write_all_vectored(const File& f, iovec* iov, int count) {
  while (count > 0) {
    const ssize_t n = ::writev(f.fd(), iov, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Errc::kIo, "cannot write " + f.path() + ": " + errno_text(errno));
    }
    size_t left = static_cast<size_t>(n);
    for (; count > 0 && left >= iov->iov_len; --count, ++iov) left -= iov->iov_len;
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return {};
}

}  // namespace

struct BundleWriter::Impl {
  File out;
  const crypto::SigningKey* device = nullptr;
  SealParams params;
  SealingPolicy* policy = &no_policy();
  Manifest manifest;
  SecretBytes data_key;
  uint64_t offset = 0;  // bytes written so far (the write step's while streaming)

  // The current stream. table and the hashers belong to the pipeline while chunks are in
  // flight; the caller touches them only after drain().
  bool in_stream = false;
  StreamInfo stream;
  std::vector<ChunkEntry> table;
  crypto::Hasher sha256;
  std::optional<crypto::Hasher> md5, sha1;
  uint64_t next_index = 0;
  Slot* current = nullptr;  // being filled by the caller
  Slot* pending = nullptr;  // full, sealed once more data shows it is not the last chunk

  // Chunk buffers, allocated by the caller as needed up to the budget; a slot's entry is
  // written once, before the pipeline first sees it.
  std::vector<std::unique_ptr<Slot>> slots;
  size_t allocated = 0;
  // Per pipeline thread: its encryption context and record hasher.
  std::vector<crypto::Aes256Gcm> gcms;
  std::vector<crypto::Hasher> record_hashers;
  std::unique_ptr<detail::ChunkPipeline> pipeline;  // last: stops before the rest goes

  Impl(File f, crypto::Hasher h) : out(std::move(f)), sha256(std::move(h)) {}

  Status write_record(const RecordHeader& h, ByteView payload) {
    auto hdr = encode_record_header(h);
    MLFX_TRY(out.write_all(hdr));
    MLFX_TRY(out.write_all(payload));
    policy->wrote(out.fd(), offset, hdr.size() + payload.size());
    offset += hdr.size() + payload.size();
    return {};
  }

  Status start_pipeline(unsigned workers) {
    for (unsigned w = 0; w < workers; ++w) {
      MLFX_ASSIGN(crypto::Aes256Gcm gcm, crypto::Aes256Gcm::create(data_key.view()));
      MLFX_ASSIGN(crypto::Hasher hasher, crypto::Hasher::create(crypto::HashAlg::kSha256));
      gcms.push_back(std::move(gcm));
      record_hashers.push_back(std::move(hasher));
    }
    auto running_hash = [this](std::optional<crypto::Hasher> Impl::*h) {
      return detail::PipelineTask{true, [this, h](size_t i, unsigned) -> Status {
                                    (this->*h)->update({slots[i]->mem.data(), slots[i]->fill});
                                    return {};
                                  }};
    };
    std::vector<detail::PipelineTask> hashes{{true, [this](size_t i, unsigned) -> Status {
      sha256.update({slots[i]->mem.data(), slots[i]->fill});
      return {};
    }}};
    if (params.legacy_hashes) {
      hashes.push_back(running_hash(&Impl::md5));
      hashes.push_back(running_hash(&Impl::sha1));
    }
    std::vector<std::vector<detail::PipelineTask>> steps{
        std::move(hashes),
        {{false, [this](size_t i, unsigned w) { return seal_chunk(*slots[i], w); }}},
        {{true, [this](size_t i, unsigned) { return write_chunk(*slots[i]); }}}};
    pipeline = std::make_unique<detail::ChunkPipeline>(std::move(steps), slots.size(), workers,
                                                       [this] { policy->pipeline_thread_started(); });
    return {};
  }

  // Encrypts the chunk in place (its plaintext is hashed by now) and hashes its record.
  Status seal_chunk(Slot& s, unsigned worker) {
    if (params.cancel && params.cancel->load()) return fail(Errc::kIo, "interrupted");
    RecordHeader h{static_cast<uint32_t>(RecordType::kChunk), s.final ? kChunkFinal : 0,
                   s.fill + crypto::kTagSize, s.stream, s.index};
    s.header = encode_record_header(h);
    MLFX_TRY(gcms[worker].seal(chunk_nonce(s.stream, s.index), chunk_aad(manifest.bundle_id, s.header),
                               {s.mem.data(), s.fill}, s.mem.data(), s.tag.data()));
    crypto::Hasher& hasher = record_hashers[worker];
    hasher.update(s.header);
    hasher.update({s.mem.data(), s.fill});
    hasher.update(s.tag);
    MLFX_ASSIGN(Bytes digest, hasher.finish());
    std::memcpy(s.record_sha256.data(), digest.data(), 32);
    return {};
  }

  // Appends the sealed record to the file (chunks come here in order) and to the chunk table.
  Status write_chunk(Slot& s) {
    ChunkEntry e;
    e.record_offset = offset;
    e.plaintext_size = static_cast<uint32_t>(s.fill);
    e.flags = s.final ? kChunkFinal : 0;
    e.record_sha256 = s.record_sha256;
    iovec iov[3] = {{s.header.data(), s.header.size()}, {s.mem.data(), s.fill}, {s.tag.data(), s.tag.size()}};
    MLFX_TRY(write_all_vectored(out, iov, 3));
    const uint64_t size = kRecordHeaderSize + s.fill + crypto::kTagSize;
    policy->wrote(out.fd(), offset, size);
    offset += size;
    table.push_back(e);
    return {};
  }

  // A new chunk buffer in slot `allocated`; its memory is touched now when `populate`.
  Result<Slot*> add_slot(bool populate) {
    MLFX_ASSIGN(ChunkMemory m, ChunkMemory::allocate(manifest.chunk_size, *policy));
    if (populate) m.populate();
    slots[allocated] = std::make_unique<Slot>(allocated, std::move(m));
    return slots[allocated++].get();
  }

  // A free slot for the caller, allocating one while under the budget, else waiting.
  Result<Slot*> acquire() {
    MLFX_ASSIGN(std::optional<size_t> free, pipeline->try_acquire());
    Slot* s = nullptr;
    if (free) {
      s = slots[*free].get();
    } else if (allocated < slots.size()) {
      MLFX_ASSIGN(s, add_slot(false));
    } else {
      // Out of buffers: the caller waits for sealing (the policy may want sealing to hurry).
      MLFX_ASSIGN(size_t i, pipeline->acquire([this](bool waiting) { policy->producer_waiting(waiting); }));
      s = slots[i].get();
    }
    s->fill = 0;
    return s;
  }

  void release(Slot* s) { pipeline->add_free_slot(s->id); }

  Status submit(Slot* s, bool final) {
    if (next_index >= kMaxChunksPerStream)
      return fail(Errc::kInvalidArgument,
                  "stream " + stream.name + " exceeds " + std::to_string(kMaxChunksPerStream) +
                      " chunks of " + std::to_string(manifest.chunk_size) +
                      " bytes; seal it with a larger chunk size");
    stream.size += s->fill;
    s->stream = stream.index;
    s->index = next_index++;
    s->final = final;
    return pipeline->submit(s->id);
  }

  // Waits until every submitted chunk is written.
  Status drain() { return pipeline->drain(); }
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
  MLFX_ASSIGN(crypto::Hasher sha, crypto::Hasher::create(crypto::HashAlg::kSha256));
  auto impl = std::make_unique<Impl>(std::move(out), std::move(sha));
  impl->device = &device;
  impl->data_key = crypto::random_secret(crypto::kDataKeySize);
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
  MLFX_ASSIGN(m.key_commitment, key_commitment(impl->data_key.view(), m.bundle_id));
  for (const auto& r : recipients) {
    for (const auto& earlier : m.recipients)
      if (earlier.recipient_fingerprint == r.fingerprint())
        return fail(Errc::kInvalidArgument, "recipient " + r.fingerprint() + " given twice");
    MLFX_ASSIGN(crypto::WrappedKey w, crypto::wrap_data_key(r, impl->data_key.view(), m.bundle_id));
    m.recipients.push_back(std::move(w));
  }
  const unsigned workers = params.sealer_threads ? params.sealer_threads : detail::default_workers();
  impl->slots.resize(std::max<uint64_t>(workers + kSlotsBesideWorkers, params.buffer_bytes / params.chunk_size));
  if (params.policy) impl->policy = params.policy;
  impl->params = std::move(params);

  FileHeader fh;
  fh.bundle_id = m.bundle_id;
  fh.chunk_size = m.chunk_size;
  auto hdr = encode_file_header(fh);
  MLFX_TRY(impl->out.write_all(hdr));
  impl->offset = hdr.size();
  MLFX_TRY(impl->start_pipeline(workers));
  return BundleWriter(std::move(impl));
}

const BundleId& BundleWriter::bundle_id() const { return impl_->manifest.bundle_id; }
uint64_t BundleWriter::bytes_written() const { return impl_->offset; }

Status BundleWriter::prepare_buffers(uint64_t bytes) {
  Impl& s = *impl_;
  const uint64_t want = std::min<uint64_t>(s.slots.size(), (bytes + s.manifest.chunk_size - 1) / s.manifest.chunk_size);
  while (s.allocated < want) {
    MLFX_ASSIGN(Slot* slot, s.add_slot(true));
    s.pipeline->add_free_slot(slot->id);
  }
  return {};
}

void BundleWriter::add_context(const json::Json& fields) {
  for (const auto& [k, v] : fields.items()) impl_->manifest.context[k] = v;
}

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
  MLFX_TRY(s.drain());  // the hashers and the table are the caller's again
  s.stream = StreamInfo{};
  s.stream.index = static_cast<uint32_t>(s.manifest.streams.size());
  s.stream.name = name;
  s.stream.source = source;
  s.stream.started_utc = utc_timestamp();
  s.table.clear();
  s.next_index = 0;
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

Result<std::span<uint8_t>> BundleWriter::buffer(size_t max) {
  Impl& s = *impl_;
  if (!s.in_stream) return fail(Errc::kInvalidArgument, "no stream begun");
  if (s.current && s.current->fill == s.manifest.chunk_size) {
    // Full: it is sealed as a middle chunk once commit() brings more data, else as the last.
    s.pending = s.current;
    s.current = nullptr;
  }
  if (!s.current) {
    MLFX_ASSIGN(s.current, s.acquire());
  }
  const size_t room = s.manifest.chunk_size - s.current->fill;
  return std::span<uint8_t>(s.current->mem.data() + s.current->fill, std::min(std::max<size_t>(max, 1), room));
}

Status BundleWriter::commit(size_t n) {
  Impl& s = *impl_;
  if (!s.in_stream || !s.current) return fail(Errc::kInvalidArgument, "commit() without buffer()");
  if (n > s.manifest.chunk_size - s.current->fill)
    return fail(Errc::kInvalidArgument, "commit() of more than buffer() gave");
  if (n == 0) return {};
  s.current->fill += n;
  if (s.pending) {
    MLFX_TRY(s.submit(s.pending, false));
    s.pending = nullptr;
  }
  return {};
}

Status BundleWriter::write(ByteView data) {
  while (!data.empty()) {
    MLFX_ASSIGN(std::span<uint8_t> room, buffer(data.size()));
    std::memcpy(room.data(), data.data(), room.size());
    MLFX_TRY(commit(room.size()));
    data = data.subspan(room.size());
  }
  return {};
}

Status BundleWriter::write_from(File& in, Progress* progress) {
  while (true) {
    MLFX_ASSIGN(std::span<uint8_t> room, buffer(impl_->manifest.chunk_size));
    MLFX_ASSIGN(size_t n, in.read_full(room.data(), room.size()));
    MLFX_TRY(commit(n));
    if (progress) progress->advance(n);
    if (n < room.size()) return {};
  }
}

Result<StreamInfo> BundleWriter::end_stream() {
  Impl& s = *impl_;
  if (!s.in_stream) return fail(Errc::kInvalidArgument, "no stream begun");
  // The last chunk: the pending full one when nothing followed it, else the current one
  // (empty only for an empty stream).
  if (s.pending) {
    if (s.current) s.release(s.current);
    s.current = std::exchange(s.pending, nullptr);
  } else if (!s.current) {
    MLFX_ASSIGN(s.current, s.acquire());
  }
  MLFX_TRY(s.submit(std::exchange(s.current, nullptr), true));
  MLFX_TRY(s.drain());
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
  return s.stream;
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
