#include "intake/evidence_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"

namespace mlfx::intake {
namespace {

using wire::WireError;

tl::unexpected<wire::ErrorMessage> refuse(WireError code, std::string message) {
  return tl::unexpected<wire::ErrorMessage>(wire::ErrorMessage{code, std::move(message)});
}

std::string at(uint64_t off) { return " at offset " + std::to_string(off); }

constexpr size_t kMaxMetadataUnits = bundle::kMaxStreams + 5;  // header, tables, MNFT MSIG CUST END
constexpr uint64_t kMetadataBase = 4u << 20;  // header, manifest, signature, custody log, end
constexpr char kJournalContext[] = "mlfx-intake-v1 journal\n";
constexpr uint64_t kSyncStep = 128u << 20;  // bytes written between two syncs during an upload

Status make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0750) != 0 && errno != EEXIST)
    return fail(Errc::kIo, "cannot create " + path + ": " + errno_text(errno));
  return {};
}

std::vector<std::string> list_names(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  return names;
}

size_t count_partials(const std::string& dir) {
  size_t n = 0;
  for (const auto& name : list_names(dir)) n += name.size() > 5 && name.substr(name.size() - 5) == ".part";
  return n;
}

// Reserves the whole file once its metadata verified, so that a full disk is found before any
// chunk is sent.
Status reserve_space(File& f, uint64_t size) {
  int err = ::posix_fallocate(f.fd(), 0, static_cast<off_t>(size));
  if (err == 0) return {};
  if (err == EOPNOTSUPP || err == EINVAL) {
    if (::ftruncate(f.fd(), static_cast<off_t>(size)) == 0) return {};
    err = errno;
  }
  return fail(Errc::kIo, "cannot reserve " + std::to_string(size) + " bytes for " + f.path() + ": " + errno_text(err));
}

std::string utc_of(time_t t) {
  tm parts{};
  gmtime_r(&t, &parts);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &parts);
  return buf;
}

// The offer a verified partial was made for (its .meta.json).
std::optional<wire::Offer> partial_offer(const std::string& key) {
  auto text = read_small_file(key + ".meta.json", 1u << 20);
  if (!text) return std::nullopt;
  auto meta = json::parse(*text, key + ".meta.json");
  if (!meta || !meta->contains("offer")) return std::nullopt;
  const std::string body = json::canonical((*meta)["offer"]);
  auto offer = wire::parse_offer(as_bytes(body));
  return offer ? std::optional(*offer) : std::nullopt;
}

}  // namespace

uint64_t metadata_allowance(const wire::Offer& o) {
  const uint64_t chunks = o.file_size / std::max<uint32_t>(o.chunk_size, 1) + bundle::kMaxStreams;
  const uint64_t tables = bundle::kMaxStreams * bundle::kRecordHeaderSize + chunks * bundle::kChunkTableEntrySize;
  return std::min(o.file_size, kMetadataBase + tables);
}

uint64_t metadata_unit_limit(const wire::Offer& o) {
  return std::min<uint64_t>(metadata_allowance(o), bundle::kRecordHeaderSize + bundle::kMaxMetadataRecord);
}

uint64_t chunk_record_limit(const wire::Offer& o) {
  return uint64_t(o.chunk_size) + bundle::kRecordHeaderSize + crypto::kTagSize + wire::kRecordOffsetSize;
}

std::string fingerprint_hex(const std::string& fingerprint) {
  const std::string prefix = "sha256:";
  return fingerprint.rfind(prefix, 0) == 0 ? fingerprint.substr(prefix.size()) : fingerprint;
}

// ---- PartialUpload ----

PartialUpload::~PartialUpload() { stop_worker(); }

void PartialUpload::stop_worker() {
  {
    std::lock_guard lock(work_mu_);
    work_stop_ = true;
  }
  work_cv_.notify_all();
  if (checker_.joinable()) checker_.join();
  if (writer_.joinable()) writer_.join();
  if (syncer_.joinable()) syncer_.join();
  std::lock_guard lock(work_mu_);
  work_stop_ = false;
}

void PartialUpload::release_resources() {
  (void)drain();
  stop_worker();
  std::lock_guard lock(work_mu_);
  spares_.clear();
  (void)direct_.close();
  direct_tried_ = false;
  (void)sync_file_.close();
}

bool PartialUpload::complete() {
  std::lock_guard lock(work_mu_);
  return metadata_ && !to_check_ && !to_write_ && held_units_ == units_.size();
}

std::vector<wire::ByteRange> PartialUpload::held() {
  (void)drain();
  std::lock_guard lock(work_mu_);
  std::vector<wire::ByteRange> ranges;
  for (const UnitState& u : units_)
    if (u.held) ranges.push_back({u.offset, u.size});
  return wire::normalize_ranges(std::move(ranges));
}

// Writes a unit and starts its write-back at once, so that the fsync before the receipt has
// little left to wait for.
Status PartialUpload::write_unit(uint64_t offset, ByteView unit) {
  MLFX_TRY(file_.pwrite_all(offset, unit));
  (void)::sync_file_range(file_.fd(), static_cast<off_t>(offset), static_cast<off_t>(unit.size()),
                          SYNC_FILE_RANGE_WRITE);
  return {};
}

// A checked chunk record: its kIoAlignment-aligned middle with direct I/O straight from the
// record's buffer (no copy into the page cache, no write-back left for the fsync), its
// unaligned ends (less than a page each) through the page cache. Where direct I/O is refused,
// the whole unit goes through the page cache.
Status PartialUpload::write_chunk(uint64_t offset, ByteView unit) {
  using transport::kIoAlignment;
  const size_t head = std::min<size_t>(unit.size(), (kIoAlignment - offset % kIoAlignment) % kIoAlignment);
  const size_t middle = (unit.size() - head) / kIoAlignment * kIoAlignment;
  const bool aligned = reinterpret_cast<uintptr_t>(unit.data() + head) % kIoAlignment == 0;
  if (middle == 0 || !aligned) return write_unit(offset, unit);
  Status st;
  if (!write_direct(offset + head, unit.subspan(head, middle), &st)) return write_unit(offset, unit);
  MLFX_TRY(st);
  if (head > 0) MLFX_TRY(file_.pwrite_all(offset, unit.first(head)));
  if (head + middle < unit.size()) MLFX_TRY(file_.pwrite_all(offset + head + middle, unit.subspan(head + middle)));
  return {};
}

// False when direct I/O is not available here (then nothing was written); else *st says how
// the write went.
bool PartialUpload::write_direct(uint64_t offset, ByteView aligned, Status* st) {
  if (!direct_tried_) {
    direct_tried_ = true;
    const int fd = ::open(file_.path().c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (fd >= 0) direct_ = File(fd, file_.path());
  }
  if (!direct_.is_open()) return false;
  size_t done = 0;
  while (done < aligned.size()) {
    const ssize_t n = ::pwrite(direct_.fd(), aligned.data() + done, aligned.size() - done,
                               static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && done == 0) {  // alignment or file system: not for this file
      (void)direct_.close();
      return false;
    }
    if (n <= 0) {
      *st = fail(Errc::kIo, "cannot write " + file_.path() + at(offset + done) + ": " +
                                (n < 0 ? errno_text(errno) : std::string("no progress")));
      return true;
    }
    done += static_cast<size_t>(n);
    if (done % transport::kIoAlignment != 0 && done < aligned.size()) {  // a short write off the alignment
      *st = file_.pwrite_all(offset + done, aligned.subspan(done));
      return true;
    }
  }
  *st = {};
  return true;
}

WireResult<void> PartialUpload::accept(uint64_t offset, ByteView unit, transport::FrameBuffer* storage) {
  if (!metadata_) return accept_metadata(offset, unit);
  auto it = unit_at_.find(offset);
  if (it == unit_at_.end()) return refuse(WireError::kBadRecord, "no unit of this bundle starts" + at(offset));
  UnitState& u = units_[it->second];
  if (unit.size() != u.size)
    return refuse(WireError::kBadRecord, "the unit" + at(offset) + " is " + std::to_string(u.size) +
                                             " bytes, not " + std::to_string(unit.size()));
  return submit_chunk(it->second, unit, storage);
}

WireResult<void> PartialUpload::submit_chunk(size_t index, ByteView unit, transport::FrameBuffer* storage) {
  bool last = false;
  {
    std::unique_lock lock(work_mu_);
    work_cv_.wait(lock, [&] { return !to_check_ || work_error_; });
    if (work_error_) return tl::unexpected(*work_error_);
    // Sent again after a cut link: already verified and stored, or about to be.
    if (units_[index].held || (to_write_ && to_write_->index == index)) return {};
    if (!checker_.joinable()) checker_ = std::thread([this] { check_chunks(); });
    if (!writer_.joinable()) writer_ = std::thread([this] { write_chunks(); });
    if (!syncer_.joinable()) syncer_ = std::thread([this] { sync_chunks(); });
    Job job{index, {}, {}};
    transport::FrameBuffer spare;
    if (!spares_.empty()) {
      spare = std::move(spares_.back());
      spares_.pop_back();
    }
    const bool in_storage = storage && storage->data() && unit.data() >= storage->data() &&
                            unit.data() + unit.size() <= storage->data() + storage->capacity();
    if (in_storage) {  // the record's buffer moves on; the connection reads the next into the spare
      job.storage = std::move(*storage);
      *storage = std::move(spare);
      job.unit = unit;
    } else {
      job.storage = std::move(spare);
      const size_t at = transport::FrameBuffer::unit_start(units_[index].offset);
      job.storage.reserve(at + unit.size());
      std::memcpy(job.storage.data() + at, unit.data(), unit.size());
      job.unit = ByteView(job.storage.data() + at, unit.size());
    }
    to_check_ = std::move(job);
    last = held_units_ + (to_write_ ? 1 : 0) + 1 == units_.size();
  }
  work_cv_.notify_all();
  accepted_bytes_ += unit.size();
  if (last) return drain();
  return {};
}

WireResult<void> PartialUpload::drain() {
  std::unique_lock lock(work_mu_);
  work_cv_.wait(lock, [&] { return !to_check_ && !to_write_; });
  if (work_error_) return tl::unexpected(*work_error_);
  return {};
}

// The checker: a record goes on to the writer only when its bytes match the signed table.
void PartialUpload::check_chunks() {
  for (;;) {
    ByteView bytes;
    size_t index;
    {
      std::unique_lock lock(work_mu_);
      work_cv_.wait(lock, [&] { return work_stop_ || to_check_; });
      if (!to_check_) return;
      index = to_check_->index;
      bytes = to_check_->unit;
    }
    const UnitState& u = units_[index];
    Bytes digest = crypto::sha256(bytes);
    const bool ok = std::memcmp(digest.data(), u.chunk->record_sha256.data(), 32) == 0;
    {
      std::unique_lock lock(work_mu_);
      if (!ok) {
        work_error_ = wire::ErrorMessage{WireError::kBadRecord, "the chunk record" + at(u.offset) +
                                                                    " does not match the SHA-256 in the signed chunk table"};
        spares_.push_back(std::move(to_check_->storage));
      } else {
        work_cv_.wait(lock, [&] { return !to_write_; });
        to_write_ = std::move(to_check_);
      }
      to_check_.reset();
    }
    work_cv_.notify_all();
  }
}

// The writer: checked records to their offsets in the partial file.
void PartialUpload::write_chunks() {
  for (;;) {
    ByteView bytes;
    size_t index;
    {
      std::unique_lock lock(work_mu_);
      work_cv_.wait(lock, [&] { return to_write_ || (work_stop_ && !to_check_); });
      if (!to_write_) return;
      index = to_write_->index;
      bytes = to_write_->unit;
    }
    auto st = write_chunk(units_[index].offset, bytes);
    {
      std::lock_guard lock(work_mu_);
      if (!st) {
        work_error_ = wire::ErrorMessage{WireError::kStoreFailed, st.error().to_string()};
      } else {
        mark_held(index);
        unsynced_bytes_ += bytes.size();
      }
      if (spares_.size() < 2) spares_.push_back(std::move(to_write_->storage));
      to_write_.reset();
    }
    work_cv_.notify_all();
  }
}

// The syncer: every kSyncStep bytes written, an fdatasync while the upload goes on, so that
// the disk (and a write cache under it) takes the data as it comes and the fsync before the
// receipt (§7) has only the last part left. On its own descriptor: an error it sees is still
// reported to the commit's fsync on the upload's descriptor (and fails the upload here too).
void PartialUpload::sync_chunks() {
  std::unique_lock lock(work_mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return work_stop_ || unsynced_bytes_ >= kSyncStep; });
    if (work_stop_) return;
    unsynced_bytes_ = 0;
    lock.unlock();
    if (!sync_file_.is_open()) {
      const int fd = ::open(file_.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) sync_file_ = File(fd, file_.path());
    }
    Status st;
    if (sync_file_.is_open() && ::fdatasync(sync_file_.fd()) != 0)
      st = fail(Errc::kIo, "cannot sync " + file_.path() + ": " + errno_text(errno));
    lock.lock();
    if (!st && !work_error_) work_error_ = wire::ErrorMessage{WireError::kStoreFailed, st.error().to_string()};
  }
}

WireResult<void> PartialUpload::accept_metadata(uint64_t offset, ByteView unit) {
  const uint64_t size = offer_.file_size;
  if (offset > size || unit.size() > size - offset)
    return refuse(WireError::kBadRecord, "a unit" + at(offset) + " runs past the end of the " +
                                             std::to_string(size) + "-byte bundle");
  if (offset == 0) {
    if (unit.size() != bundle::kFileHeaderSize)
      return refuse(WireError::kBadRecord, "the file header unit must be 64 bytes");
  } else {
    if (unit.size() < bundle::kRecordHeaderSize)
      return refuse(WireError::kBadRecord, "the unit" + at(offset) + " is shorter than a record header");
    auto h = bundle::decode_record_header(unit.first(bundle::kRecordHeaderSize), offset);
    if (!h) return refuse(WireError::kBadRecord, h.error().to_string());
    if (h->type == uint32_t(bundle::RecordType::kChunk))
      return refuse(WireError::kBadRecord, "a chunk record" + at(offset) +
                                               " came before the bundle's metadata was complete; send the "
                                               "header, chunk tables, manifest, signature, custody log and end first");
    if (bundle::kRecordHeaderSize + h->payload_size != unit.size())
      return refuse(WireError::kBadRecord, "the unit" + at(offset) + " is not one whole record");
  }
  if (std::find(pending_metadata_.begin(), pending_metadata_.end(), offset) == pending_metadata_.end()) {
    if (pending_metadata_.size() >= kMaxMetadataUnits)
      return refuse(WireError::kBadBundle, "more metadata units than a bundle can have");
    if (pending_metadata_bytes_ + unit.size() > metadata_allowance(offer_))
      return refuse(WireError::kBadBundle, "more metadata than a bundle of " + std::to_string(size) +
                                               " bytes in chunks of " + std::to_string(offer_.chunk_size) + " can have");
    pending_metadata_.push_back(offset);
    pending_metadata_bytes_ += unit.size();
  }
  if (auto st = write_unit(offset, unit); !st) return refuse(WireError::kStoreFailed, st.error().to_string());
  accepted_bytes_ += unit.size();
  if (offset + unit.size() < size) return {};
  // The END record: the metadata is complete. Check it before taking any chunk.
  std::sort(pending_metadata_.begin(), pending_metadata_.end());
  return check_metadata();
}

Status PartialUpload::load_metadata(const std::vector<uint64_t>& offsets) {
  MLFX_ASSIGN(bundle::BundleReader r, bundle::BundleReader::open_metadata(file_.path(), offer_.file_size, offsets));
  metadata_ = std::move(r);
  units_.clear();
  unit_at_.clear();
  for (const bundle::Unit& u : metadata_->metadata_units()) units_.push_back({u.offset, u.size, nullptr, false});
  for (const auto& stream : metadata_->layout())
    for (const auto& c : stream.chunks)
      units_.push_back({c.record_offset, bundle::kRecordHeaderSize + c.plaintext_size + crypto::kTagSize, &c, false});
  std::sort(units_.begin(), units_.end(), [](const UnitState& a, const UnitState& b) { return a.offset < b.offset; });
  for (size_t i = 0; i < units_.size(); ++i) unit_at_[units_[i].offset] = i;
  held_units_ = 0;
  return {};
}

// Everything the intake can check without the lab key (wire-protocol.md §5.2).
WireResult<void> PartialUpload::check_metadata() {
  if (auto st = load_metadata(pending_metadata_); !st) {
    metadata_.reset();
    return refuse(WireError::kBadBundle, "structure: " + st.error().to_string());
  }
  const bundle::Manifest& m = metadata_->manifest();
  if (m.bundle_id_hex() != offer_.bundle_id)
    return refuse(WireError::kBadBundle, "the bundle is " + m.bundle_id_hex() + ", the offer named " + offer_.bundle_id);
  if (m.chunk_size != offer_.chunk_size)
    return refuse(WireError::kBadBundle, "the offer's chunk size does not match the bundle's");
  // The digest names the stored file; the chunk records it commits to are checked one by one
  // as they arrive, so what is stored is exactly what it names.
  auto digest = metadata_->digest();
  if (!digest) return refuse(WireError::kStoreFailed, digest.error().to_string());
  if (*digest != offer_.bundle_digest)
    return refuse(WireError::kBadBundle, "the bundle's digest is " + *digest + ", not the offered " + offer_.bundle_digest);
  if (auto st = metadata_->verify_signature(); !st)
    return refuse(WireError::kBadBundle, "signature: " + st.error().to_string());
  if (m.device.key_fingerprint != device_fingerprint_)
    return refuse(WireError::kWrongDevice, "the bundle was signed by device '" + m.device.id + "' (key " +
                                               m.device.key_fingerprint + "), but this connection is device key " +
                                               device_fingerprint_ + ": a device may upload only its own bundles");
  // The key is the certificate's; so must the name be, or the bundle would be filed under a
  // device the lab CA never vouched for.
  if (m.device.id != device_id_)
    return refuse(WireError::kWrongDevice, "the manifest names device '" + m.device.id +
                                               "', but this connection's certificate is for device '" + device_id_ +
                                               "': seal with --device-id " + device_id_ +
                                               " or issue the certificate for the name in the manifest");
  if (auto report = metadata_->verify_custody(); !report)
    return refuse(WireError::kBadBundle, "custody: " + report.error().to_string());
  if (auto reserved = store_->reserve(*this); !reserved) {
    metadata_.reset();
    return reserved;
  }
  json::Json meta = {{"offer", wire::to_json(offer_)}, {"metadata_units", pending_metadata_}};
  if (auto st = replace_file(key_ + ".meta.json", json::canonical(meta), 0640); !st)
    return refuse(WireError::kStoreFailed, st.error().to_string());
  for (size_t i = 0; i < units_.size(); ++i)
    if (!units_[i].chunk) {
      std::lock_guard lock(work_mu_);
      mark_held(i);
    }
  return {};
}

// After a restart: a chunk is held when its bytes in the partial hash to its table entry, so a
// record torn by a crash is simply sent again.
Status PartialUpload::rebuild_held() {
  Bytes buf;
  for (size_t i = 0; i < units_.size(); ++i) {
    UnitState& u = units_[i];
    if (!u.chunk) {
      std::lock_guard lock(work_mu_);
      mark_held(i);
      continue;
    }
    buf.resize(u.size);
    MLFX_TRY(file_.pread_exact(u.offset, buf.data(), 4));
    if (load_le<uint32_t>(buf.data()) != uint32_t(bundle::RecordType::kChunk)) continue;  // never written
    MLFX_TRY(file_.pread_exact(u.offset, buf.data(), buf.size()));
    Bytes digest = crypto::sha256(buf);
    if (std::memcmp(digest.data(), u.chunk->record_sha256.data(), 32) == 0) {
      std::lock_guard lock(work_mu_);
      mark_held(i);
    }
  }
  return {};
}

void PartialUpload::mark_held(size_t index) {
  if (!units_[index].held) {
    units_[index].held = true;
    ++held_units_;
  }
}

// ---- EvidenceStore ----

Result<std::unique_ptr<EvidenceStore>> EvidenceStore::open(const std::string& dir, crypto::SigningKey intake_key,
                                                           custody::Actor intake, StoreLimits limits) {
  MLFX_TRY(make_dir(dir));
  MLFX_TRY(make_dir(dir + "/objects"));
  MLFX_TRY(make_dir(dir + "/partial"));
  // One intake per store: two would hand out the same upload twice.
  auto lock = DirLock::try_acquire(dir);
  if (!lock)
    return fail(lock.error().code() == Errc::kExists
                    ? Error(Errc::kExists, "another mlfx serve uses the store " + dir)
                    : std::move(lock).error());
  std::unique_ptr<EvidenceStore> store(new EvidenceStore(dir, std::move(intake_key), std::move(intake), limits,
                                                         std::move(*lock)));
  store->tidy();
  store->load_charges();
  store->expire_partials();
  return store;
}

// What an intake killed at a bad moment leaves: temporary files of atomic writes, a partial
// upload whose bundle was stored just before the kill, and uploads whose metadata never
// verified (nothing of them is evidence; their metadata is sent again).
void EvidenceStore::tidy() {
  for (const auto& name : list_names(dir_ + "/objects"))
    if (name.rfind(".", 0) == 0 && name.find(".tmp.") != std::string::npos) ::unlink((dir_ + "/objects/" + name).c_str());
  for (const auto& device : list_names(dir_ + "/partial")) {
    const std::string d = dir_ + "/partial/" + device;
    for (const auto& name : list_names(d)) {
      const size_t dash = name.find('-');
      const size_t dot = name.find('.');
      if (dash == std::string::npos || dot == std::string::npos || dot < dash) continue;
      if (find(name.substr(dash + 1, dot - dash - 1))) ::unlink((d + "/" + name).c_str());
    }
    for (const auto& name : list_names(d)) {
      const std::string key = d + "/" + name.substr(0, name.size() - 5);
      if (name.ends_with(".part") && !partial_offer(key)) remove_partial_files(key);
    }
  }
}

// After a restart: what the verified partials hold against the caps (whatever the caps are
// now), and what each device has stored, for its quota.
void EvidenceStore::load_charges() {
  std::lock_guard lock(mu_);
  for (const auto& device : list_names(dir_ + "/partial"))
    for (const auto& name : list_names(dir_ + "/partial/" + device)) {
      const std::string key = dir_ + "/partial/" + device + "/" + name.substr(0, name.size() - 5);
      auto offer = name.ends_with(".part") ? partial_offer(key) : std::nullopt;
      if (!offer) continue;
      charges_[key] = {device, offer->file_size};
      reserved_by_device_[device] += offer->file_size;
      reserved_total_ += offer->file_size;
    }
  if (limits_.device_quota == 0) return;
  for (const auto& name : list_names(dir_ + "/objects")) {
    if (!name.ends_with(".receipt.json")) continue;
    auto receipt = find(name.substr(0, name.size() - std::strlen(".receipt.json")));
    if (receipt)
      stored_by_device_[fingerprint_hex(receipt->receipt.device_key_fingerprint)] += receipt->receipt.file_size;
  }
}

uint64_t EvidenceStore::max_bundle() const {
  uint64_t m = std::min({limits_.max_bundle, limits_.max_reserved, limits_.max_reserved_per_device});
  return limits_.device_quota ? std::min(m, limits_.device_quota) : m;
}

WireResult<void> EvidenceStore::charge(const std::string& key, const std::string& device, uint64_t bytes) {
  auto it = charges_.find(key);
  const uint64_t before = it == charges_.end() ? 0 : it->second.bytes;
  const uint64_t device_after = reserved_by_device_[device] - before + bytes;
  const uint64_t total_after = reserved_total_ - before + bytes;
  if (bytes > before) {
    const std::string want = "this upload needs " + std::to_string(bytes) + " bytes";
    if (device_after > limits_.max_reserved_per_device)
      return refuse(WireError::kOverQuota, want + ", and this device's unfinished uploads would then hold " +
                                               std::to_string(device_after) + "; the intake holds at most " +
                                               std::to_string(limits_.max_reserved_per_device) +
                                               " per device (--max-reserved-per-device): finish them, or wait "
                                               "until they expire (--partial-ttl)");
    if (limits_.device_quota && device_after + stored_by_device_[device] > limits_.device_quota)
      return refuse(WireError::kOverQuota, want + ", over this device's quota of " +
                                               std::to_string(limits_.device_quota) + " bytes (--device-quota), of which " +
                                               std::to_string(stored_by_device_[device]) + " are stored bundles");
    if (total_after > limits_.max_reserved)
      return refuse(WireError::kStoreFailed, want + ", and the intake's space for unfinished uploads (" +
                                                 std::to_string(limits_.max_reserved) +
                                                 " bytes, --max-reserved) is taken; retry later");
  }
  charges_[key] = {device, bytes};
  reserved_by_device_[device] = device_after;
  reserved_total_ = total_after;
  return {};
}

void EvidenceStore::uncharge(const std::string& key) {
  auto it = charges_.find(key);
  if (it == charges_.end()) return;
  reserved_by_device_[it->second.device] -= it->second.bytes;
  if (reserved_by_device_[it->second.device] == 0) reserved_by_device_.erase(it->second.device);
  reserved_total_ -= it->second.bytes;
  charges_.erase(it);
}

WireResult<void> EvidenceStore::reserve(PartialUpload& p) {
  const std::string device = fingerprint_hex(p.device_fingerprint_);
  {
    std::lock_guard lock(mu_);
    if (auto ok = charge(p.key_, device, p.offer_.file_size); !ok) return ok;
  }
  if (auto st = reserve_space(p.file_, p.offer_.file_size); !st) {
    std::lock_guard lock(mu_);
    (void)charge(p.key_, device, metadata_allowance(p.offer_));  // lower: cannot fail
    return refuse(WireError::kStoreFailed, st.error().to_string());
  }
  return {};
}

void EvidenceStore::remove_partial_files(const std::string& key) {
  ::unlink((key + ".part").c_str());
  ::unlink((key + ".meta.json").c_str());
}

void EvidenceStore::release(PartialUpload& p) {
  std::lock_guard lock(mu_);
  p.claimed_ = false;
  if (p.verified()) return;  // kept for a resume
  remove_partial_files(p.key_);
  uncharge(p.key_);
  uploads_.erase(p.key_);
}

std::vector<json::Json> EvidenceStore::expire_partials() {
  std::vector<json::Json> notes;
  const time_t now = ::time(nullptr);
  for (const auto& device : list_names(dir_ + "/partial")) {
    for (const auto& name : list_names(dir_ + "/partial/" + device)) {
      if (!name.ends_with(".part")) continue;
      const std::string key = dir_ + "/partial/" + device + "/" + name.substr(0, name.size() - 5);
      struct stat st {};
      if (::stat((key + ".part").c_str(), &st) != 0 || now - st.st_mtime < limits_.partial_ttl.count()) continue;
      auto offer = partial_offer(key);
      {
        std::lock_guard lock(mu_);  // a connection that wants it now either holds it or starts afresh
        auto it = uploads_.find(key);
        if (it != uploads_.end() && it->second->claimed_) continue;
        if (it != uploads_.end()) uploads_.erase(it);
        uncharge(key);
        remove_partial_files(key);
      }
      if (!offer) continue;  // its metadata never verified: nothing of it was evidence
      json::Json note = {{"device_key_fingerprint", "sha256:" + device},
                         {"bundle_id", offer->bundle_id},
                         {"bundle_digest", offer->bundle_digest},
                         {"file_size", offer->file_size},
                         {"reserved_bytes", uint64_t(st.st_blocks) * 512},
                         {"last_activity_utc", utc_of(st.st_mtime)},
                         {"partial_ttl_s", limits_.partial_ttl.count()}};
      if (auto j = journal("partial_expired", note); !j) note["journal_error"] = j.error().to_string();
      notes.push_back(std::move(note));
    }
  }
  return notes;
}

// One line per note, canonical JSON chained to the line before by its SHA-256 and signed by
// the intake key, like the custody events the store writes; fsynced before it returns.
Status EvidenceStore::journal(const std::string& type, json::Json details) {
  std::lock_guard lock(journal_mu_);
  const std::string path = dir_ + "/journal.jsonl";
  if (journal_prev_.empty()) {
    auto text = read_small_file(path, 64u << 20);
    std::string last = "mlfx-intake-v1 journal genesis\n";
    if (text && !text->empty()) {
      const size_t end = text->find_last_not_of('\n');
      const size_t start = text->rfind('\n', end);
      last = text->substr(start == std::string::npos ? 0 : start + 1, end - (start == std::string::npos ? 0 : start + 1) + 1);
    }
    journal_prev_ = to_hex(crypto::sha256(as_bytes(last)));
  }
  json::Json event = {{"type", type},
                      {"time_utc", utc_timestamp()},
                      {"actor", {{"role", actor_.role}, {"id", actor_.id}, {"host", actor_.host}, {"user", actor_.user}}},
                      {"intake_key_fingerprint", intake_key().fingerprint()},
                      {"details", std::move(details)},
                      {"prev", journal_prev_}};
  const std::string unsigned_text = json::canonical(event);
  MLFX_ASSIGN(Bytes sig, key_.sign(as_bytes(std::string(kJournalContext) + unsigned_text)));
  event["signature"] = to_base64(sig);
  const std::string line = json::canonical(event);
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return fail(Errc::kIo, "cannot open " + path + ": " + errno_text(errno));
  File f(fd, path);
  MLFX_TRY(f.write_all(as_bytes(line + "\n")));
  MLFX_TRY(f.sync());
  journal_prev_ = to_hex(crypto::sha256(as_bytes(line)));
  return {};
}

std::string EvidenceStore::object_path(const std::string& digest, const char* suffix) const {
  return dir_ + "/objects/" + digest + suffix;
}

std::optional<wire::SignedReceipt> EvidenceStore::find(const std::string& bundle_digest) const {
  auto text = read_small_file(object_path(bundle_digest, ".receipt.json"), wire::kMaxControlBody);
  if (!text) return std::nullopt;
  auto receipt = wire::parse_receipt(as_bytes(*text));
  if (!receipt || receipt->receipt.bundle_digest != bundle_digest) return std::nullopt;
  if (!intake_key().verify(wire::receipt_signing_message(receipt->receipt), receipt->signature)) return std::nullopt;
  struct stat st;
  if (::stat(object_path(bundle_digest, ".mlfx").c_str(), &st) != 0) return std::nullopt;
  return std::move(*receipt);
}

EvidenceStore::Claim& EvidenceStore::Claim::operator=(Claim&& o) noexcept {
  if (this != &o) {
    release();
    store_ = std::exchange(o.store_, nullptr);
    upload_ = std::move(o.upload_);
  }
  return *this;
}

EvidenceStore::Claim::~Claim() { release(); }

void EvidenceStore::Claim::release() {
  if (!store_ || !upload_) return;
  upload_->release_resources();  // an idle upload holds no thread or buffer of its worker
  store_->release(*upload_);
  store_ = nullptr;
  upload_.reset();
}

WireResult<EvidenceStore::Claim> EvidenceStore::begin(const Uploader& who, const wire::Offer& offer) {
  if (offer.file_size > max_bundle())
    return refuse(WireError::kBundleTooLarge, "the bundle is " + std::to_string(offer.file_size) +
                                                  " bytes; this intake takes at most " + std::to_string(max_bundle()) +
                                                  " from one device (--max-bundle, --max-reserved-per-device, "
                                                  "--max-reserved, --device-quota)");
  const std::string device = fingerprint_hex(who.key_fingerprint);
  const std::string key = dir_ + "/partial/" + device + "/" + offer.bundle_id + "-" + offer.bundle_digest;
  std::shared_ptr<PartialUpload> upload;
  bool charged_here = false;
  {
    std::lock_guard lock(mu_);
    auto it = uploads_.find(key);
    if (it != uploads_.end()) {
      if (it->second->claimed_)
        return refuse(WireError::kBusy, "another connection is uploading this bundle; retry later");
      const wire::Offer& had = it->second->offer_;
      if (had.file_size != offer.file_size || had.chunk_size != offer.chunk_size)
        return refuse(WireError::kBadBundle, "the offer does not match the earlier offer of this bundle");
      it->second->claimed_ = true;
      {
        // A bad record that ended an earlier connection was not written: this connection may
        // send that unit again (§5.3), so the earlier connection's error is not carried over.
        std::unique_lock work(it->second->work_mu_);
        it->second->work_cv_.wait(work, [&] { return !it->second->to_check_ && !it->second->to_write_; });
        it->second->work_error_.reset();
      }
      return Claim(this, it->second);
    }
    // Until its metadata verifies, an upload counts what that metadata can be, not the bundle.
    if (!charges_.count(key)) {
      if (auto ok = charge(key, device, metadata_allowance(offer)); !ok) return tl::unexpected(ok.error());
      charged_here = true;
    }
    upload = std::make_shared<PartialUpload>();
    upload->claimed_ = true;
    uploads_[key] = upload;
  }
  // Opening may re-hash a large partial after a restart: done outside the lock.
  if (auto st = open_partial(who, offer, key, *upload); !st) {
    std::lock_guard lock(mu_);
    uploads_.erase(key);
    if (charged_here) uncharge(key);
    return refuse(st.error().code() == Errc::kExists ? WireError::kTooManyPartials : WireError::kStoreFailed,
                  st.error().to_string());
  }
  return Claim(this, upload);
}

// Fills `p`, which no other connection looks at while it is claimed.
Status EvidenceStore::open_partial(const Uploader& who, const wire::Offer& offer, const std::string& key,
                                   PartialUpload& upload) {
  PartialUpload* p = &upload;
  p->store_ = this;
  p->key_ = key;
  p->offer_ = offer;
  p->device_fingerprint_ = who.key_fingerprint;
  p->device_id_ = who.device_id;
  const std::string device_dir = key.substr(0, key.rfind('/'));
  MLFX_TRY(make_dir(device_dir));
  const std::string part = key + ".part";
  int fd = ::open(part.c_str(), O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    p->file_ = File(fd, part);
    MLFX_ASSIGN(uint64_t size, p->file_.size());
    if (size != offer.file_size)
      return fail(Errc::kInvalidArgument, "the offer does not match the earlier partial upload of this bundle");
    auto meta_text = read_small_file(key + ".meta.json", 1u << 20);
    if (!meta_text) return {};  // the metadata never completed: it is sent again
    auto meta = json::parse(*meta_text, key + ".meta.json");
    std::vector<uint64_t> offsets;
    if (meta && meta->contains("metadata_units") && (*meta)["metadata_units"].is_array())
      for (const auto& o : (*meta)["metadata_units"])
        if (o.is_number_unsigned()) offsets.push_back(o.get<uint64_t>());
    p->pending_metadata_ = offsets;
    if (auto checked = p->check_metadata(); !checked) {
      p->metadata_.reset();  // damaged: the client sends the metadata again
      p->pending_metadata_.clear();
      return {};
    }
    return p->rebuild_held();
  }
  if (errno != ENOENT) return fail(Errc::kIo, "cannot open " + part + ": " + errno_text(errno));
  if (count_partials(device_dir) >= limits_.max_partials_per_device)
    return fail(Errc::kExists, "this device already has " + std::to_string(limits_.max_partials_per_device) +
                                   " unfinished uploads; finish or abandon one first");
  MLFX_ASSIGN(p->file_, File::create_new(part, 0640));
  // File::create_new opens write-only; the partial is also read (hashing, restarts).
  fd = ::open(part.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return fail(Errc::kIo, "cannot open " + part + ": " + errno_text(errno));
  p->file_ = File(fd, part);
  // Sparse until the metadata verifies (EvidenceStore::reserve): an offer costs no space.
  if (::ftruncate(fd, static_cast<off_t>(offer.file_size)) != 0) {
    const int err = errno;
    ::unlink(part.c_str());
    return fail(Errc::kIo, "cannot size " + part + ": " + errno_text(err));
  }
  return {};
}

void EvidenceStore::discard(Claim& claim) {
  if (!claim.upload_) return;
  const std::string key = claim.upload_->key_;
  remove_partial_files(key);
  std::lock_guard lock(mu_);
  uploads_.erase(key);
  uncharge(key);
  claim.upload_->claimed_ = false;
  claim.upload_.reset();
  claim.store_ = nullptr;
}

WireResult<wire::SignedReceipt> EvidenceStore::commit(Claim& claim, const Uploader& who,
                                                      const std::string& started_utc) {
  PartialUpload& p = *claim;
  const std::string& digest = p.offer_.bundle_digest;  // checked against the metadata on arrival
  std::vector<std::string> created;
  auto undo = [&](const Error& e) {
    for (const auto& path : created) ::unlink(path.c_str());
    return refuse(WireError::kStoreFailed, "could not store the bundle durably: " + e.to_string() + "; retry later");
  };
  if (auto st = p.file_.sync(); !st) return undo(st.error());
  const std::string object = object_path(digest, ".mlfx");
  if (::link(p.file_.path().c_str(), object.c_str()) == 0) {
    created.push_back(object);
  } else if (errno != EEXIST) {  // EEXIST: stored by an earlier attempt that died before its receipt
    return undo(Error(Errc::kIo, "cannot link " + object + ": " + errno_text(errno)));
  }
  if (auto st = fsync_dir(dir_ + "/objects"); !st) return undo(st.error());
  wire::SignedReceipt receipt;
  if (auto st = write_custody_and_receipt(p, who, started_utc, &receipt, &created); !st) return undo(st.error());
  // Read-only from now on (the same inode as the partial, which an earlier attempt may have
  // left writable for its retry).
  (void)::fchmod(p.file_.fd(), 0440);
  remove_partial_files(p.key_);
  std::lock_guard lock(mu_);
  uploads_.erase(p.key_);
  uncharge(p.key_);
  stored_by_device_[fingerprint_hex(who.key_fingerprint)] += p.offer_.file_size;
  return receipt;
}

Status EvidenceStore::write_custody_and_receipt(PartialUpload& p, const Uploader& who, const std::string& started_utc,
                                                wire::SignedReceipt* out, std::vector<std::string>* created) {
  const wire::Offer& offer = p.offer_;
  const std::string received = utc_timestamp();
  const std::string stored_as = "objects/" + offer.bundle_digest + ".mlfx";
  custody::CustodyLog log = p.metadata_->custody();
  json::Json details = {{"device_id", who.device_id},
                        {"device_key_fingerprint", who.key_fingerprint},
                        {"certificate_serial", who.certificate_serial},
                        {"peer", who.address},
                        {"bundle_id", offer.bundle_id},
                        {"bundle_digest", offer.bundle_digest},
                        {"file_size", offer.file_size},
                        {"upload_started_utc", started_utc},
                        {"stored_as", stored_as}};
  MLFX_TRY(log.append("received", actor_, key_, json::Json::object(), details));
  const std::string custody_path = object_path(offer.bundle_digest, ".custody.jsonl");
  created->push_back(custody_path);
  MLFX_TRY(replace_file(custody_path, log.serialize(), 0440));

  wire::Receipt& r = out->receipt;
  r.bundle_id = offer.bundle_id;
  r.bundle_digest = offer.bundle_digest;
  r.file_size = offer.file_size;
  r.device_key_fingerprint = who.key_fingerprint;
  r.stored_as = stored_as;
  r.received_utc = received;
  r.custody_event_sha256 = custody::event_hash(log.events().back());
  r.intake_key_fingerprint = intake_key().fingerprint();
  MLFX_ASSIGN(out->signature, key_.sign(wire::receipt_signing_message(r)));
  const std::string receipt_path = object_path(offer.bundle_digest, ".receipt.json");
  created->push_back(receipt_path);
  return replace_file(receipt_path, json::canonical(wire::to_json(*out)), 0440);
}

}  // namespace mlfx::intake
