#include "mlfx/bundle/writer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "mlfx/base/clock.h"
#include "mlfx/base/host.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/version.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::bundle {
namespace {

constexpr size_t kHugePage = 2u << 20;
constexpr size_t kMinSlots = 4;  // enough for every stage to hold one chunk
constexpr int kMadvPopulateWrite = 23;  // <linux/mman.h>, absent from older libc headers
constexpr int kBackgroundNice = 19;
constexpr uint64_t kWritebackStep = 16u << 20;

// One chunk's memory: plaintext of the evidence, kept out of core dumps and locked where
// RLIMIT_MEMLOCK allows (SecureBuffer), aligned for transparent huge pages, so a capture that
// fills hundreds of MiB while its target is frozen takes 512x fewer page faults.
class ChunkMemory {
 public:
  static Result<ChunkMemory> allocate(size_t size) {
    MLFX_ASSIGN(SecureBuffer b, SecureBuffer::allocate(size, kHugePage));
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
// record hashed by a sealer, written. Stages take slots in this order.
struct Slot {
  enum class State { kFree, kFilling, kFilled, kHashed, kSealing, kSealed };
  explicit Slot(ChunkMemory m) : mem(std::move(m)) {}
  ChunkMemory mem;
  State state = State::kFree;
  size_t fill = 0;
  uint32_t stream = 0;
  uint64_t index = 0;
  bool final = false;
  std::array<uint8_t, kRecordHeaderSize> header{};
  std::array<uint8_t, crypto::kTagSize> tag{};
  std::array<uint8_t, 32> record_sha256{};
};

unsigned default_sealers() {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return std::clamp(cores > 2 ? cores - 2 : 1u, 1u, 4u);
}

}  // namespace

struct BundleWriter::Impl {
  File out;
  const crypto::SigningKey* device = nullptr;
  SealParams params;
  Manifest manifest;
  SecretBytes data_key;
  uint64_t offset = 0;  // bytes written so far (the writer thread's while streaming)
  uint64_t writeback_from = 0;

  // The current stream. table and the hashers belong to the pipeline threads while chunks
  // are in flight; the caller touches them only after drain().
  bool in_stream = false;
  StreamInfo stream;
  std::vector<ChunkEntry> table;
  crypto::Hasher sha256;
  std::optional<crypto::Hasher> md5, sha1;
  uint64_t next_index = 0;
  Slot* current = nullptr;  // being filled by the caller
  Slot* pending = nullptr;  // full, sealed once more data shows it is not the last chunk

  // The pipeline.
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Slot>> slots;
  std::vector<Slot*> free_slots;
  std::deque<Slot*> in_flight;  // submitted, oldest first
  size_t max_slots = kMinSlots;
  std::optional<Error> error;   // the first failure of any stage
  bool stopping = false;
  std::vector<std::thread> threads;
  std::vector<pid_t> thread_ids;  // for their CPU priority
  bool background = false;        // set_background(true)
  bool low_priority = false;      // what the threads run at now

  Impl(File f, crypto::Hasher h) : out(std::move(f)), sha256(std::move(h)) {}

  ~Impl() {
    {
      std::lock_guard lk(mu);
      stopping = true;
    }
    cv.notify_all();
    for (auto& t : threads) t.join();
  }

  Status write_record(const RecordHeader& h, ByteView payload) {
    auto hdr = encode_record_header(h);
    MLFX_TRY(out.write_all(hdr));
    MLFX_TRY(out.write_all(payload));
    offset += hdr.size() + payload.size();
    return {};
  }

  void start_threads(unsigned sealers) {
    auto registered = [this](auto body) {
      return [this, body = std::move(body)]() mutable {
        {
          std::lock_guard lk(mu);
          thread_ids.push_back(static_cast<pid_t>(syscall(SYS_gettid)));
        }
        cv.notify_all();
        body();
      };
    };
    threads.emplace_back(registered([this] { hash_loop(); }));
    for (unsigned i = 0; i < sealers; ++i) {
      auto gcm = crypto::Aes256Gcm::create(data_key.view());
      if (!gcm) {
        std::lock_guard lk(mu);
        error = gcm.error();
        break;
      }
      threads.emplace_back(registered([this, g = std::move(*gcm)]() mutable { seal_loop(g); }));
    }
    threads.emplace_back(registered([this] { write_loop(); }));
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return thread_ids.size() == threads.size(); });
  }

  // Called with mu held by a stage that failed: everything stops, the caller sees `e`.
  void fail_locked(Error e) {
    if (!error) error = std::move(e);
    cv.notify_all();
  }

  Status error_status() {
    std::lock_guard lk(mu);
    if (error) return fail(*error);
    return {};
  }

  // The first in-flight slot in `state` (slots enter each state in order, except sealing).
  Slot* find(Slot::State state) {
    for (Slot* s : in_flight)
      if (s->state == state) return s;
    return nullptr;
  }

  void hash_loop() {
    std::unique_lock lk(mu);
    while (true) {
      Slot* s = nullptr;
      cv.wait(lk, [&] { return stopping || error || (s = find(Slot::State::kFilled)); });
      if (!s) return;
      lk.unlock();
      ByteView pt(s->mem.data(), s->fill);
      sha256.update(pt);
      if (md5) md5->update(pt);
      if (sha1) sha1->update(pt);
      lk.lock();
      s->state = Slot::State::kHashed;
      cv.notify_all();
    }
  }

  void seal_loop(crypto::Aes256Gcm& gcm) {
    auto hasher = crypto::Hasher::create(crypto::HashAlg::kSha256);
    std::unique_lock lk(mu);
    if (!hasher) return fail_locked(hasher.error());
    while (true) {
      Slot* s = nullptr;
      cv.wait(lk, [&] { return stopping || error || (s = find(Slot::State::kHashed)); });
      if (!s) return;
      if (params.cancel && params.cancel->load()) return fail_locked(Error(Errc::kIo, "interrupted"));
      s->state = Slot::State::kSealing;
      lk.unlock();
      RecordHeader h{static_cast<uint32_t>(RecordType::kChunk), s->final ? kChunkFinal : 0,
                     s->fill + crypto::kTagSize, s->stream, s->index};
      s->header = encode_record_header(h);
      Status st = gcm.seal(chunk_nonce(s->stream, s->index), chunk_aad(manifest.bundle_id, s->header),
                           {s->mem.data(), s->fill}, s->mem.data(), s->tag.data());
      if (st) {
        hasher->update(s->header);
        hasher->update({s->mem.data(), s->fill});
        hasher->update(s->tag);
        auto digest = hasher->finish();
        if (digest) std::memcpy(s->record_sha256.data(), digest->data(), 32);
        else st = fail(digest.error());
      }
      lk.lock();
      if (!st) return fail_locked(st.error());
      s->state = Slot::State::kSealed;
      cv.notify_all();
    }
  }

  void write_loop() {
    std::unique_lock lk(mu);
    while (true) {
      cv.wait(lk, [&] {
        return stopping || error || (!in_flight.empty() && in_flight.front()->state == Slot::State::kSealed);
      });
      if (stopping || error) return;
      Slot* s = in_flight.front();
      lk.unlock();
      ChunkEntry e;
      e.record_offset = offset;
      e.plaintext_size = static_cast<uint32_t>(s->fill);
      e.flags = s->final ? kChunkFinal : 0;
      e.record_sha256 = s->record_sha256;
      Status st = out.write_all(s->header);
      if (st) st = out.write_all({s->mem.data(), s->fill});
      if (st) st = out.write_all(s->tag);
      offset += kRecordHeaderSize + s->fill + crypto::kTagSize;
      table.push_back(e);
      start_writeback();
      lk.lock();
      if (!st) return fail_locked(st.error());
      in_flight.pop_front();
      s->state = Slot::State::kFree;
      free_slots.push_back(s);
      cv.notify_all();
    }
  }

  // Starts the disk writes of what is written so far, so the fsync in finish() has little
  // left to wait for: the disk works while we seal. Only a hint (pipes refuse it).
  void start_writeback() {
    if (offset - writeback_from < kWritebackStep) return;
    (void)sync_file_range(out.fd(), static_cast<off_t>(writeback_from),
                          static_cast<off_t>(offset - writeback_from), SYNC_FILE_RANGE_WRITE);
    writeback_from = offset;
  }

  // Adds a slot (with mu held); its memory is touched now when `populate`.
  Status add_slot_locked(bool populate) {
    MLFX_ASSIGN(ChunkMemory m, ChunkMemory::allocate(manifest.chunk_size));
    if (populate) m.populate();
    slots.push_back(std::make_unique<Slot>(std::move(m)));
    free_slots.push_back(slots.back().get());
    return {};
  }

  // Pipeline threads at nice 19 or at the process's priority; only on a change.
  void set_priority_locked(bool low) {
    if (low == low_priority) return;
    low_priority = low;
    const int nice = low ? kBackgroundNice : getpriority(PRIO_PROCESS, 0);
    for (pid_t tid : thread_ids) (void)setpriority(PRIO_PROCESS, static_cast<id_t>(tid), nice);
  }

  // A free slot for the caller, allocating one while under the budget, else waiting.
  Result<Slot*> acquire() {
    std::unique_lock lk(mu);
    if (free_slots.empty() && slots.size() < max_slots) {
      MLFX_TRY(add_slot_locked(false));
    }
    if (free_slots.empty()) {
      // Out of buffers: the caller waits for sealing, so sealing must not wait for others.
      set_priority_locked(false);
      cv.wait(lk, [&] { return error || !free_slots.empty(); });
      set_priority_locked(background);
    }
    if (error) return fail(*error);
    Slot* s = free_slots.back();
    free_slots.pop_back();
    s->state = Slot::State::kFilling;
    s->fill = 0;
    return s;
  }

  void release(Slot* s) {
    std::lock_guard lk(mu);
    s->state = Slot::State::kFree;
    free_slots.push_back(s);
  }

  Status submit(Slot* s, bool final) {
    if (next_index >= kMaxChunksPerStream)
      return fail(Errc::kInvalidArgument,
                  "stream " + stream.name + " exceeds " + std::to_string(kMaxChunksPerStream) +
                      " chunks of " + std::to_string(manifest.chunk_size) +
                      " bytes; seal it with a larger chunk size");
    stream.size += s->fill;
    std::lock_guard lk(mu);
    if (error) return fail(*error);
    s->stream = stream.index;
    s->index = next_index++;
    s->final = final;
    s->state = Slot::State::kFilled;
    in_flight.push_back(s);
    cv.notify_all();
    return {};
  }

  // Waits until every submitted chunk is written.
  Status drain() {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return error || in_flight.empty(); });
    if (error) return fail(*error);
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
  impl->max_slots = std::max<uint64_t>(kMinSlots, params.buffer_bytes / params.chunk_size);
  const unsigned sealers = params.sealer_threads ? params.sealer_threads : default_sealers();
  impl->params = std::move(params);

  FileHeader fh;
  fh.bundle_id = m.bundle_id;
  fh.chunk_size = m.chunk_size;
  auto hdr = encode_file_header(fh);
  MLFX_TRY(impl->out.write_all(hdr));
  impl->offset = hdr.size();
  impl->start_threads(sealers);
  MLFX_TRY(impl->error_status());
  return BundleWriter(std::move(impl));
}

const BundleId& BundleWriter::bundle_id() const { return impl_->manifest.bundle_id; }
uint64_t BundleWriter::bytes_written() const { return impl_->offset; }

Status BundleWriter::prepare_buffers(uint64_t bytes) {
  Impl& s = *impl_;
  std::lock_guard lk(s.mu);
  const uint64_t want = std::min<uint64_t>(s.max_slots, (bytes + s.manifest.chunk_size - 1) / s.manifest.chunk_size);
  while (s.slots.size() < want) MLFX_TRY(s.add_slot_locked(true));
  return {};
}

void BundleWriter::set_background(bool background) {
  Impl& s = *impl_;
  std::lock_guard lk(s.mu);
  s.background = background;
  s.set_priority_locked(background);
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

Status BundleWriter::end_stream() {
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
