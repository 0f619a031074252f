#include "upload/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "mlfx/base/clock.h"
#include "mlfx/base/progress.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::agent {
namespace {

constexpr const char* kSubdirs[] = {"incoming", "queue", "rejected", "receipts"};
constexpr size_t kMaxSidecar = 1u << 20;

Status make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0750) != 0 && errno != EEXIST)
    return fail(Errc::kIo, "cannot create " + path + ": " + errno_text(errno));
  return {};
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

Result<std::vector<std::string>> list_names(const std::string& dir, std::string_view suffix) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return fail(Errc::kIo, "cannot list " + dir + ": " + errno_text(errno));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name[0] != '.' && ends_with(name, suffix)) names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

uint64_t file_size_or_zero(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// What the shipper needs to know of a bundle, from its metadata alone (no pass over the data).
Result<SpoolEntry> describe(const std::string& path) {
  MLFX_ASSIGN(bundle::BundleReader reader, bundle::BundleReader::open(path));
  if (auto st = reader.verify_signature(); !st) return fail(std::move(st).error().context(path));
  SpoolEntry e;
  e.bundle_id = reader.manifest().bundle_id_hex();
  e.file_size = reader.file_size();
  e.chunk_size = reader.header().chunk_size;
  MLFX_ASSIGN(e.bundle_digest, reader.digest());
  return e;
}

// Temporary files of atomic writes that a killed agent left; only old ones, since another
// agent process may be writing one right now.
void remove_stale_temporaries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const time_t old = ::time(nullptr) - 600;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name[0] != '.' || (name.find(".tmp.") == std::string::npos && !ends_with(name, ".copy"))) continue;
    struct stat st;
    const std::string path = dir + "/" + name;
    if (::stat(path.c_str(), &st) == 0 && st.st_mtime < old) ::unlink(path.c_str());
  }
  ::closedir(d);
}

// Copies src to a new file dst and syncs it; the kernel moves the bytes (copy_file_range).
Status copy_file(const std::string& src, const std::string& dst) {
  MLFX_ASSIGN(File in, File::open_read(src));
  MLFX_ASSIGN(uint64_t size, in.size());
  MLFX_ASSIGN(File out, File::create_new(dst, 0640));
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = ::copy_file_range(in.fd(), nullptr, out.fd(), nullptr, size - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      ::unlink(dst.c_str());
      return fail(Errc::kIo, "cannot copy " + src + " to " + dst + ": " + errno_text(err));
    }
    done += static_cast<uint64_t>(n);
  }
  if (auto st = out.sync(); !st) {
    ::unlink(dst.c_str());
    return st;
  }
  return out.close();
}

// "2026-11-22T05:01:02.123456Z" -> "20261122T050102.123456Z": sorts by time, safe in a file name.
std::string compact_time(const std::string& utc) {
  std::string s;
  for (char c : utc)
    if (c != '-' && c != ':') s += c;
  return s;
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
  MLFX_TRY(make_dir(dir));
  for (const char* sub : kSubdirs) {
    MLFX_TRY(make_dir(dir + "/" + sub));
    remove_stale_temporaries(dir + "/" + sub);
  }
  const std::string config = dir + "/config.json";
  uint64_t q = kDefaultSpoolQuota;
  if (auto text = read_small_file(config, kMaxSidecar)) {
    MLFX_ASSIGN(json::Json j, json::parse(*text, config));
    MLFX_ASSIGN(q, json::get_uint(j, "quota_bytes", config));
  }
  if (quota) {
    q = *quota;
    MLFX_TRY(replace_file(config, json::canonical({{"quota_bytes", q}}), 0640));
  }
  return Spool(dir, q);
}

Result<uint64_t> Spool::used_bytes() const {
  uint64_t used = 0;
  for (const char* sub : {"incoming", "queue", "rejected"}) {
    MLFX_ASSIGN(auto names, list_names(dir_ + "/" + sub, ".mlfx"));
    for (const auto& n : names) used += file_size_or_zero(dir_ + "/" + sub + "/" + n);
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

std::string Spool::incoming_path(const std::string& name) const { return dir_ + "/incoming/" + name; }

Result<SpoolEntry> Spool::add(const std::string& bundle_path) { return enqueue(bundle_path, false); }

Result<SpoolEntry> Spool::add_incoming(const std::string& incoming) { return enqueue(incoming, true); }

Result<SpoolEntry> Spool::enqueue(const std::string& source, bool move) {
  // Only sound, signed bundles enter the queue; the intake would refuse anything else.
  MLFX_ASSIGN(SpoolEntry e, describe(source));
  MLFX_ASSIGN(auto queued, queue());
  for (const auto& q : queued)
    if (q.bundle_digest == e.bundle_digest) {
      if (move) ::unlink(source.c_str());
      return q;
    }
  if (!move) MLFX_TRY(check_room(e.file_size));
  e.added_utc = utc_timestamp();
  e.name = compact_time(e.added_utc) + "-" + e.bundle_id + ".mlfx";
  e.path = dir_ + "/queue/" + e.name;
  // The sidecar first: a bundle in queue/ always has one, or is re-hashed (see list()).
  MLFX_TRY(save(e, "queue"));
  if (move) {
    if (::rename(source.c_str(), e.path.c_str()) != 0) {
      int err = errno;
      ::unlink((e.path + ".json").c_str());
      return fail(Errc::kIo, "cannot move " + source + " into the spool: " + errno_text(err));
    }
  } else {
    const std::string tmp = dir_ + "/incoming/." + e.name + ".copy";
    Status st = copy_file(source, tmp);
    if (st && ::rename(tmp.c_str(), e.path.c_str()) != 0)
      st = fail(Errc::kIo, "cannot move " + tmp + " into the queue: " + errno_text(errno));
    if (!st) {
      ::unlink(tmp.c_str());
      ::unlink((e.path + ".json").c_str());
      return fail(std::move(st).error());
    }
  }
  MLFX_TRY(fsync_dir(dir_ + "/queue"));
  return e;
}

Status Spool::save(const SpoolEntry& e, const std::string& sub) const {
  return replace_file(dir_ + "/" + sub + "/" + e.name + ".json", json::canonical(e.to_json()), 0640);
}

Result<std::vector<SpoolEntry>> Spool::list(const std::string& sub) const {
  const std::string dir = dir_ + "/" + sub;
  MLFX_ASSIGN(auto names, list_names(dir, ".mlfx"));
  std::vector<SpoolEntry> entries;
  for (const auto& name : names) {
    const std::string sidecar = dir + "/" + name + ".json";
    auto text = read_small_file(sidecar, kMaxSidecar);
    Result<SpoolEntry> e = fail(Errc::kNotFound, "no sidecar");
    if (text) {
      auto j = json::parse(*text, sidecar);
      if (j) e = SpoolEntry::from_json(*j, sidecar);
    }
    if (!e) {
      // A damaged or missing sidecar: describe the bundle again.
      MLFX_ASSIGN(SpoolEntry fresh, describe(dir + "/" + name));
      fresh.added_utc = utc_timestamp();
      e = fresh;
    }
    e->name = name;
    e->path = dir + "/" + name;
    entries.push_back(std::move(*e));
  }
  return entries;
}

Result<std::vector<SpoolEntry>> Spool::queue() const { return list("queue"); }
Result<std::vector<SpoolEntry>> Spool::rejected() const { return list("rejected"); }

Result<size_t> Spool::receipt_count() const {
  MLFX_ASSIGN(auto names, list_names(dir_ + "/receipts", ".receipt.json"));
  return names.size();
}

Status Spool::record_attempt(SpoolEntry& e, const std::string& error) {
  ++e.attempts;
  e.last_attempt_utc = utc_timestamp();
  e.last_error = error;
  return save(e, "queue");
}

Status Spool::complete(const SpoolEntry& e, const wire::SignedReceipt& receipt) {
  const std::string stem = e.name.substr(0, e.name.size() - 5);  // without .mlfx
  MLFX_TRY(replace_file(dir_ + "/receipts/" + stem + ".receipt.json", json::canonical(wire::to_json(receipt)), 0640));
  if (::unlink(e.path.c_str()) != 0 && errno != ENOENT)
    return fail(Errc::kIo, "cannot remove " + e.path + ": " + errno_text(errno));
  ::unlink((e.path + ".json").c_str());
  return fsync_dir(dir_ + "/queue");
}

Status Spool::reject(SpoolEntry& e, const std::string& reason) {
  e.rejected_reason = reason;
  ++e.attempts;
  e.last_attempt_utc = utc_timestamp();
  e.last_error = reason;
  MLFX_TRY(save(e, "rejected"));
  const std::string to = dir_ + "/rejected/" + e.name;
  if (::rename(e.path.c_str(), to.c_str()) != 0)
    return fail(Errc::kIo, "cannot move " + e.path + " to " + to + ": " + errno_text(errno));
  ::unlink((e.path + ".json").c_str());
  e.path = to;
  MLFX_TRY(fsync_dir(dir_ + "/rejected"));
  return fsync_dir(dir_ + "/queue");
}

}  // namespace mlfx::agent
