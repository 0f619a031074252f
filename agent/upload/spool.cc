#include "upload/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

#include "mlfx/base/clock.h"
#include "mlfx/base/progress.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::agent {
namespace {

constexpr const char* kSubdirs[] = {"incoming", "queue", "rejected", "receipts"};
constexpr size_t kMaxSidecar = 1u << 20;
constexpr mode_t kFileMode = 0640;
constexpr const char* kJournal = "journal.jsonl";

Error sys_error(const std::string& what, const std::string& path, int err) {
  return Error(err == EEXIST ? Errc::kExists : err == ENOENT ? Errc::kNotFound : Errc::kIo,
               what + " " + path + ": " + errno_text(err));
}

std::string octal_mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// The spool holds evidence and its shipping state: only the agent's user may change it. Another
// owner or a group/world-writable directory would let someone else plant, swap or delete files.
Status check_private(int fd, const std::string& shown) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return fail(sys_error("cannot stat", shown, errno));
  const uid_t me = ::geteuid();
  if (st.st_uid != me)
    return fail(Errc::kPermission,
                "the spool directory " + shown + " is owned by uid " + std::to_string(st.st_uid) +
                    ", not by the user this agent runs as (uid " + std::to_string(me) +
                    "); the spool must be the agent's own: chown " + std::to_string(me) + " " + shown +
                    " (or give another --spool)");
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return fail(Errc::kPermission,
                "the spool directory " + shown + " is writable by " +
                    ((st.st_mode & S_IWOTH) ? "others" : "its group") + " (mode " + octal_mode(st.st_mode) +
                    "), who could plant or swap files in it: chmod go-w " + shown);
  return {};
}

// A directory of the spool, opened without following a link, created when missing.
Result<File> open_dir_at(int parent, const std::string& name, const std::string& shown) {
  if (::mkdirat(parent, name.c_str(), 0750) != 0 && errno != EEXIST)
    return fail(sys_error("cannot create", shown, errno));
  int fd = ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    struct stat st;
    if (err == ELOOP || (err == ENOTDIR && ::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0))
      return fail(Errc::kPermission,
                  shown + " is " + (err == ELOOP || S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory") +
                      "; the spool follows no links: remove it (rm " + shown + ") and run again");
    return fail(sys_error("cannot open", shown, err));
  }
  File dir(fd, shown);
  MLFX_TRY(check_private(fd, shown));
  return dir;
}

// A file inside a spool directory; never through a link, only a regular file. `shown` names it
// in messages.
Result<File> open_file_at(const File& dir, const std::string& name, int flags = O_RDONLY,
                          std::string shown = "") {
  if (shown.empty()) shown = dir.path() + "/" + name;
  int fd = ::openat(dir.fd(), name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, kFileMode);
  if (fd < 0) {
    if (errno == ELOOP)
      return fail(Errc::kPermission, shown + " is a symbolic link; the spool follows no links: remove it");
    return fail(sys_error("cannot open", shown, errno));
  }
  File f(fd, shown);
  struct stat st;
  if (::fstat(fd, &st) != 0) return fail(sys_error("cannot stat", shown, errno));
  if (!S_ISREG(st.st_mode)) return fail(Errc::kPermission, shown + " is not a regular file; remove it");
  // O_NONBLOCK only kept a planted FIFO from blocking the open.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return f;
}

// The same open file under a path that reopens exactly it (for APIs that take a path).
std::string fd_path(const File& f) { return "/proc/self/fd/" + std::to_string(f.fd()); }

Result<std::string> read_small_at(const File& dir, const std::string& name, size_t max_size) {
  MLFX_ASSIGN(File f, open_file_at(dir, name));
  MLFX_ASSIGN(uint64_t size, f.size());
  if (size > max_size) return fail(Errc::kBadFormat, f.path() + " is larger than " + std::to_string(max_size) + " bytes");
  std::string text(size, '\0');
  MLFX_ASSIGN(size_t n, f.read_full(reinterpret_cast<uint8_t*>(text.data()), text.size()));
  text.resize(n);
  return text;
}

Status sync_dir(const File& dir) {
  if (::fsync(dir.fd()) != 0) return fail(sys_error("cannot sync", dir.path(), errno));
  return {};
}

// A reader sees the old or the new file, never a torn one: a synced temporary file renamed over it.
Status replace_at(const File& dir, const std::string& name, std::string_view data) {
  static std::atomic<unsigned> counter{0};
  const std::string tmp = "." + name + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  MLFX_ASSIGN(File f, open_file_at(dir, tmp, O_WRONLY | O_CREAT | O_EXCL));
  Status st = f.write_all(as_bytes(data));
  if (st) st = f.sync();
  if (st) st = f.close();
  if (st && ::renameat(dir.fd(), tmp.c_str(), dir.fd(), name.c_str()) != 0)
    st = fail(sys_error("cannot rename to", dir.path() + "/" + name, errno));
  if (!st) {
    ::unlinkat(dir.fd(), tmp.c_str(), 0);
    return st;
  }
  return sync_dir(dir);
}

// Names of regular files in `dir` ending in `suffix`, sorted; what else matches (links, FIFOs,
// directories) goes to `others`. Dot files are temporaries.
Result<std::vector<std::string>> list_regular(const File& dir, std::string_view suffix,
                                              std::vector<std::string>* others = nullptr) {
  int fd = ::openat(dir.fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);  // its own read position
  DIR* d = fd < 0 ? nullptr : ::fdopendir(fd);
  if (!d) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    return fail(sys_error("cannot list", dir.path(), err));
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name[0] == '.' || !name.ends_with(suffix)) continue;
    struct stat st;
    if (::fstatat(dir.fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
    if (S_ISREG(st.st_mode)) names.push_back(name);
    else if (others) others->push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

uint64_t size_at(const File& dir, const std::string& name) {
  struct stat st;
  return ::fstatat(dir.fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)
             ? static_cast<uint64_t>(st.st_size)
             : 0;
}

// Temporary files of atomic writes and captures that a killed agent left; only old ones, since
// another agent process may be writing one right now.
void remove_stale_temporaries(const File& dir) {
  int fd = ::openat(dir.fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = fd < 0 ? nullptr : ::fdopendir(fd);
  if (!d) {
    if (fd >= 0) ::close(fd);
    return;
  }
  const time_t old = ::time(nullptr) - 600;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name[0] != '.' ||
        (name.find(".tmp.") == std::string::npos && !name.ends_with(".copy") && !name.ends_with(".new")))
      continue;
    struct stat st;
    if (::fstatat(dir.fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mtime < old)
      ::unlinkat(dir.fd(), name.c_str(), 0);
  }
  ::closedir(d);
}

// What the shipper needs to know of a bundle, from its metadata alone (no pass over the data).
Result<SpoolEntry> describe_path(const std::string& path, const std::string& shown) {
  auto reader = bundle::BundleReader::open(path);
  if (!reader) return fail(std::move(reader).error().context(shown));
  if (auto st = reader->verify_signature(); !st) return fail(std::move(st).error().context(shown));
  SpoolEntry e;
  e.bundle_id = reader->manifest().bundle_id_hex();
  e.file_size = reader->file_size();
  e.chunk_size = reader->header().chunk_size;
  MLFX_ASSIGN(e.bundle_digest, reader->digest());
  return e;
}

// Copies src to dst (a new file) and syncs it; the kernel moves the bytes (copy_file_range).
Status copy_file(File& in, File& out) {
  MLFX_ASSIGN(uint64_t size, in.size());
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = ::copy_file_range(in.fd(), nullptr, out.fd(), nullptr, size - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return fail(Errc::kIo, "cannot copy " + in.path() + " to " + out.path() + ": " + errno_text(n < 0 ? errno : EIO));
    done += static_cast<uint64_t>(n);
  }
  MLFX_TRY(out.sync());
  return out.close();
}

// "2026-11-22T05:01:02.123456Z" -> "20261122T050102.123456Z": sorts by time, safe in a file name.
std::string compact_time(const std::string& utc) {
  std::string s;
  for (char c : utc)
    if (c != '-' && c != ':') s += c;
  return s;
}

bool plain_name(const std::string& name) {
  return !name.empty() && name[0] != '.' && name.find('/') == std::string::npos;
}

}  // namespace

json::Json SpoolEntry::to_json() const {
  json::Json j = {{"name", name}, {"bundle_id", bundle_id}, {"bundle_digest", bundle_digest}, {"file_size", file_size},
                  {"chunk_size", chunk_size}, {"added_utc", added_utc}, {"attempts", attempts},
                  {"last_attempt_utc", last_attempt_utc}, {"last_error", last_error}};
  if (!rejected_reason.empty()) j["rejected_reason"] = rejected_reason;
  return j;
}

Result<SpoolEntry> SpoolEntry::from_json(const json::Json& j, const std::string& where) {
  SpoolEntry e;
  MLFX_ASSIGN(e.bundle_id, json::get_string(j, "bundle_id", where));
  MLFX_ASSIGN(e.bundle_digest, json::get_string(j, "bundle_digest", where));
  MLFX_ASSIGN(e.file_size, json::get_uint(j, "file_size", where));
  MLFX_ASSIGN(uint64_t chunk, json::get_uint(j, "chunk_size", where));
  e.chunk_size = static_cast<uint32_t>(chunk);
  MLFX_ASSIGN(e.added_utc, json::get_string(j, "added_utc", where));
  MLFX_ASSIGN(uint64_t attempts, json::get_uint(j, "attempts", where));
  e.attempts = static_cast<uint32_t>(attempts);
  MLFX_ASSIGN(e.last_attempt_utc, json::get_string(j, "last_attempt_utc", where));
  MLFX_ASSIGN(e.last_error, json::get_string(j, "last_error", where));
  if (j.contains("rejected_reason") && j["rejected_reason"].is_string())
    e.rejected_reason = j["rejected_reason"].get<std::string>();
  return e;
}

Result<Spool> Spool::open(const std::string& dir, std::optional<uint64_t> quota) {
  Spool spool(dir, kDefaultSpoolQuota);
  MLFX_TRY(spool.open_directories());
  const std::string config = "config.json";
  if (auto text = read_small_at(spool.root_, config, kMaxSidecar)) {
    MLFX_ASSIGN(json::Json j, json::parse(*text, dir + "/" + config));
    MLFX_ASSIGN(spool.quota_, json::get_uint(j, "quota_bytes", dir + "/" + config));
  } else if (text.error().code() != Errc::kNotFound) {
    return fail(std::move(text).error());
  }
  if (quota) {
    spool.quota_ = *quota;
    MLFX_TRY(replace_at(spool.root_, config, json::canonical({{"quota_bytes", spool.quota_}})));
  }
  MLFX_TRY(spool.recover_torn_captures());
  return spool;
}

Status Spool::open_directories() {
  MLFX_ASSIGN(root_, open_dir_at(AT_FDCWD, dir_, dir_));
  File* subs[] = {&incoming_, &queue_, &rejected_, &receipts_};
  for (size_t i = 0; i < std::size(kSubdirs); ++i) {
    MLFX_ASSIGN(*subs[i], open_dir_at(root_.fd(), kSubdirs[i], dir_ + "/" + kSubdirs[i]));
    remove_stale_temporaries(*subs[i]);
  }
  // Entries that are not regular files are never read nor counted; say so, they were planted.
  for (const char* name : {"incoming", "queue", "rejected"}) {
    std::vector<std::string> others;
    MLFX_TRY(list_regular(sub(name), ".mlfx", &others));
    for (const auto& o : others)
      notices_.push_back("ignoring " + std::string(name) + "/" + o +
                         ": not a regular file (a symbolic link?); the spool follows no links; remove it");
  }
  return {};
}

const File& Spool::sub(const std::string& name) const {
  if (name == "incoming") return incoming_;
  if (name == "queue") return queue_;
  if (name == "rejected") return rejected_;
  return receipts_;
}

Status Spool::journal(const json::Json& event) {
  MLFX_ASSIGN(File f, open_file_at(root_, kJournal, O_WRONLY | O_APPEND | O_CREAT));
  MLFX_TRY(f.write_all(as_bytes(json::canonical(event) + "\n")));
  MLFX_TRY(f.sync());
  return f.close();
}

// A capture in incoming/ is held (flock) by its writer until it is queued. One nobody holds was
// left by an agent that died (killed, power cut): it would count against the quota forever.
// A sound sealed bundle (the agent died between sealing and queueing) is queued; anything else
// is removed. Each is journalled: the spool's own custody note of what it did with evidence.
Status Spool::recover_torn_captures() {
  MLFX_ASSIGN(auto names, list_regular(incoming_, ".mlfx"));
  for (const auto& name : names) {
    auto file = open_file_at(incoming_, name);
    if (!file) continue;  // gone meanwhile
    if (::flock(file->fd(), LOCK_EX | LOCK_NB) != 0) continue;  // a capture is writing it
    const uint64_t size = file->size().value_or(0);
    json::Json event = {{"utc", utc_timestamp()}, {"event", "torn_capture"}, {"file", "incoming/" + name},
                        {"size", size}, {"writer", "gone (no lock holder)"}};
    std::string what;
    auto sound = describe_at(incoming_, name);  // only a bundle that verifies is kept
    if (sound) {
      MLFX_ASSIGN(SpoolEntry queued, enqueue_from_incoming(name));
      event["action"] = "queued";
      event["bundle_id"] = queued.bundle_id;
      event["queued_as"] = "queue/" + queued.name;
      what = "queued incoming/" + name + " as queue/" + queued.name +
             ": its agent died after sealing it, and the bundle verifies";
    } else {
      if (::unlinkat(incoming_.fd(), name.c_str(), 0) != 0 && errno != ENOENT)
        return fail(sys_error("cannot remove the torn capture", incoming_.path() + "/" + name, errno));
      event["action"] = "removed";
      event["reason"] = sound.error().to_string();
      what = "removed incoming/" + name + " (" + human_bytes(double(size)) +
             "): a capture whose agent died before it was sealed; it is no bundle and no longer counts "
             "against the quota";
    }
    MLFX_TRY(sync_dir(incoming_));
    MLFX_TRY(journal(event));
    notices_.push_back(what + " (noted in " + dir_ + "/" + kJournal + ")");
  }
  return {};
}

Result<uint64_t> Spool::used_bytes() const {
  uint64_t used = 0;
  for (const char* name : {"incoming", "queue", "rejected"}) {
    MLFX_ASSIGN(auto names, list_regular(sub(name), ".mlfx"));
    for (const auto& n : names) used += size_at(sub(name), n);
  }
  return used;
}

Status Spool::check_room(uint64_t bytes) const {
  MLFX_ASSIGN(uint64_t used, used_bytes());
  if (used + bytes > quota_)
    return fail(Errc::kInvalidArgument,
                "the spool " + dir_ + " would exceed its quota: " + human_bytes(double(used)) + " used of " +
                    human_bytes(double(quota_)) + ", and " + human_bytes(double(bytes)) +
                    " more are needed; ship the queue (mlfx-agent ship) or raise the quota (--spool-quota)");
  return {};
}

Result<IncomingFile> Spool::create_incoming(const std::string& name) {
  if (!plain_name(name)) return fail(Errc::kInvalidArgument, "bad incoming file name '" + name + "'");
  IncomingFile in;
  in.name = name;
  in.path = incoming_.path() + "/" + name;
  // Created under a temporary name and locked before it appears under its own, so that no
  // other agent ever sees it unlocked and takes it for torn.
  const std::string tmp = "." + name + ".new";
  MLFX_ASSIGN(in.file, open_file_at(incoming_, tmp, O_RDWR | O_CREAT | O_EXCL, in.path));
  auto failed = [&](const std::string& what, int err) {
    ::unlinkat(incoming_.fd(), tmp.c_str(), 0);
    return fail(sys_error(what, in.path, err));
  };
  if (::flock(in.file.fd(), LOCK_EX | LOCK_NB) != 0) return failed("cannot lock", errno);
  const int lock_fd = ::fcntl(in.file.fd(), F_DUPFD_CLOEXEC, 3);  // the same open file, so the same lock
  if (lock_fd < 0) return failed("cannot duplicate the descriptor of", errno);
  in.lock = File(lock_fd, in.path);
  if (::linkat(incoming_.fd(), tmp.c_str(), incoming_.fd(), name.c_str(), 0) != 0)
    return failed("cannot create", errno);  // EEXIST: a capture of that name exists
  ::unlinkat(incoming_.fd(), tmp.c_str(), 0);
  return in;
}

Result<SpoolEntry> Spool::add_incoming(IncomingFile& incoming) {
  auto e = enqueue_from_incoming(incoming.name);
  if (e) incoming.lock = File();
  return e;
}

void Spool::discard_incoming(IncomingFile& incoming) {
  if (!incoming.name.empty()) ::unlinkat(incoming_.fd(), incoming.name.c_str(), 0);
  incoming.lock = File();
}

Result<SpoolEntry> Spool::describe_at(const File& dir, const std::string& name) const {
  MLFX_ASSIGN(File f, open_file_at(dir, name));
  return describe_path(fd_path(f), f.path());
}

Result<SpoolEntry> Spool::add(const std::string& bundle_path) {
  // Only sound, signed bundles enter the queue; the intake would refuse anything else.
  MLFX_ASSIGN(File in, File::open_read(bundle_path));
  MLFX_ASSIGN(SpoolEntry e, describe_path(fd_path(in), bundle_path));
  MLFX_ASSIGN(auto queued, queue());
  for (const auto& q : queued)
    if (q.bundle_digest == e.bundle_digest) return q;
  MLFX_TRY(check_room(e.file_size));
  e.added_utc = utc_timestamp();
  e.name = compact_time(e.added_utc) + "-" + e.bundle_id + ".mlfx";
  e.path = queue_.path() + "/" + e.name;
  // The sidecar first: a bundle in queue/ always has one, or is re-hashed (see list()).
  MLFX_TRY(save(e, "queue"));
  const std::string tmp = "." + e.name + ".copy";
  auto undo = [&] {
    ::unlinkat(incoming_.fd(), tmp.c_str(), 0);
    ::unlinkat(queue_.fd(), (e.name + ".json").c_str(), 0);
  };
  auto out = open_file_at(incoming_, tmp, O_WRONLY | O_CREAT | O_EXCL);
  Status st = out ? copy_file(in, *out) : Status(fail(out.error()));
  if (st && ::renameat(incoming_.fd(), tmp.c_str(), queue_.fd(), e.name.c_str()) != 0)
    st = fail(sys_error("cannot move " + tmp + " into", queue_.path(), errno));
  if (!st) {
    undo();
    return fail(std::move(st).error());
  }
  MLFX_TRY(sync_dir(queue_));
  return e;
}

Result<SpoolEntry> Spool::enqueue_from_incoming(const std::string& name) {
  MLFX_ASSIGN(SpoolEntry e, describe_at(incoming_, name));
  MLFX_ASSIGN(auto queued, queue());
  for (const auto& q : queued)
    if (q.bundle_digest == e.bundle_digest) {
      ::unlinkat(incoming_.fd(), name.c_str(), 0);
      return q;
    }
  e.added_utc = utc_timestamp();
  e.name = compact_time(e.added_utc) + "-" + e.bundle_id + ".mlfx";
  e.path = queue_.path() + "/" + e.name;
  MLFX_TRY(save(e, "queue"));
  if (::renameat(incoming_.fd(), name.c_str(), queue_.fd(), e.name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(queue_.fd(), (e.name + ".json").c_str(), 0);
    return fail(sys_error("cannot move " + incoming_.path() + "/" + name + " into", queue_.path(), err));
  }
  MLFX_TRY(sync_dir(incoming_));
  MLFX_TRY(sync_dir(queue_));
  return e;
}

Status Spool::save(const SpoolEntry& e, const std::string& sub_name) const {
  return replace_at(sub(sub_name), e.name + ".json", json::canonical(e.to_json()));
}

Result<std::vector<SpoolEntry>> Spool::list(const std::string& sub_name) const {
  const File& dir = sub(sub_name);
  MLFX_ASSIGN(auto names, list_regular(dir, ".mlfx"));
  std::vector<SpoolEntry> entries;
  for (const auto& name : names) {
    const std::string sidecar = name + ".json";
    auto text = read_small_at(dir, sidecar, kMaxSidecar);
    Result<SpoolEntry> e = fail(Errc::kNotFound, "no sidecar");
    if (text) {
      auto j = json::parse(*text, dir.path() + "/" + sidecar);
      if (j) e = SpoolEntry::from_json(*j, dir.path() + "/" + sidecar);
    }
    if (!e) {
      // A damaged or missing sidecar: describe the bundle again.
      MLFX_ASSIGN(SpoolEntry fresh, describe_at(dir, name));
      fresh.added_utc = utc_timestamp();
      e = fresh;
    }
    e->name = name;
    e->path = dir.path() + "/" + name;
    entries.push_back(std::move(*e));
  }
  return entries;
}

Result<std::vector<SpoolEntry>> Spool::queue() const { return list("queue"); }
Result<std::vector<SpoolEntry>> Spool::rejected() const { return list("rejected"); }

Result<size_t> Spool::receipt_count() const {
  MLFX_ASSIGN(auto names, list_regular(receipts_, ".receipt.json"));
  return names.size();
}

Result<File> Spool::open_entry(const SpoolEntry& e) const {
  if (!plain_name(e.name)) return fail(Errc::kInvalidArgument, "bad spool entry name '" + e.name + "'");
  MLFX_ASSIGN(File f, open_file_at(queue_, e.name));
  const int fd = ::fcntl(f.fd(), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) return fail(sys_error("cannot duplicate the descriptor of", f.path(), errno));
  return File(fd, "/proc/self/fd/" + std::to_string(fd));
}

Status Spool::record_attempt(SpoolEntry& e, const std::string& error) {
  ++e.attempts;
  e.last_attempt_utc = utc_timestamp();
  e.last_error = error;
  return save(e, "queue");
}

Status Spool::complete(const SpoolEntry& e, const wire::SignedReceipt& receipt) {
  const std::string stem = e.name.substr(0, e.name.size() - 5);  // without .mlfx
  MLFX_TRY(replace_at(receipts_, stem + ".receipt.json", json::canonical(wire::to_json(receipt))));
  if (::unlinkat(queue_.fd(), e.name.c_str(), 0) != 0 && errno != ENOENT)
    return fail(sys_error("cannot remove", e.path, errno));
  ::unlinkat(queue_.fd(), (e.name + ".json").c_str(), 0);
  return sync_dir(queue_);
}

Status Spool::reject(SpoolEntry& e, const std::string& reason) {
  e.rejected_reason = reason;
  ++e.attempts;
  e.last_attempt_utc = utc_timestamp();
  e.last_error = reason;
  MLFX_TRY(save(e, "rejected"));
  const std::string to = rejected_.path() + "/" + e.name;
  if (::renameat(queue_.fd(), e.name.c_str(), rejected_.fd(), e.name.c_str()) != 0)
    return fail(sys_error("cannot move " + e.path + " to", to, errno));
  ::unlinkat(queue_.fd(), (e.name + ".json").c_str(), 0);
  e.path = to;
  MLFX_TRY(sync_dir(rejected_));
  return sync_dir(queue_);
}

Result<File> Spool::lock_shipping() const {
  int fd = ::openat(root_.fd(), "queue", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return fail(sys_error("cannot open", queue_.path(), errno));
  File lock(fd, queue_.path());
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return fail(Errc::kExists, "another mlfx-agent ship is running on " + dir_);
    return fail(sys_error("cannot lock", queue_.path(), errno));
  }
  return lock;
}

bool Spool::shipper_running() const {
  auto lock = lock_shipping();
  return !lock && lock.error().code() == Errc::kExists;
}

}  // namespace mlfx::agent
