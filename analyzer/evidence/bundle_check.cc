#include "evidence/bundle_check.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <optional>

#include "mlfx/base/clock.h"
#include "mlfx/base/host.h"
#include "mlfx/crypto/hash.h"
#include "pki/lab_ca.h"
#include "mlfx/wire/messages.h"

namespace mlfx::evidence {

namespace {

constexpr size_t kMaxCustodyLog = size_t{16} << 20;

// A folder of <device-id>.pub device keys: the file name binds the key to the device id.
Result<std::vector<TrustedDevice>> load_key_folder(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return fail(Errc::kNotFound, "cannot read trusted-devices directory " + dir + ": " + errno_text(errno));
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 4 && n.ends_with(".pub")) names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  std::vector<TrustedDevice> out;
  for (const auto& n : names) {
    auto k = crypto::load_public_key_file(dir + "/" + n);
    if (!k) return fail(std::move(k).error().context("trusted devices"));
    if (k->kind != crypto::KeyKind::kDevice)
      return fail(Errc::kInvalidArgument, "trusted devices: " + dir + "/" + n +
                                              " is a lab key, not a device key; remove it from " + dir);
    out.push_back({n.substr(0, n.size() - 4), k->verify->fingerprint(), dir + "/" + n, std::nullopt});
  }
  if (out.empty())
    return fail(Errc::kNotFound, "no *.pub device keys in trusted-devices directory " + dir +
                                     " (name each <device-id>.pub, or give the lab CA directory)");
  return out;
}

// A lab CA directory: every device certificate it issued binds an id to a key.
Result<std::vector<TrustedDevice>> load_lab_ca(const std::string& dir) {
  MLFX_ASSIGN(auto entries, pki::list_certificates(dir));
  std::vector<TrustedDevice> out;
  for (const auto& e : entries) {
    if (e.kind != pki::CertKind::kDevice) continue;
    TrustedDevice t{e.id, e.key_fingerprint, "lab CA " + dir + ", certificate " + e.serial, std::nullopt};
    if (e.revoked_utc) t.revoked = *e.revoked_utc + (e.reason ? " (" + *e.reason + ")" : "");
    out.push_back(std::move(t));
  }
  if (out.empty()) return fail(Errc::kNotFound, "the lab CA " + dir + " has issued no device certificate");
  return out;
}

// The device check: does the trust store bind the signing key to the manifest's device id?
CheckLine check_device(const bundle::Manifest& m, const std::string& dir) {
  const std::string& fp = m.device.key_fingerprint;
  const std::string claim = "device '" + m.device.id + "'";
  if (dir.empty())
    return {"device", Outcome::kNotRun,
            "identity unverified: signed by key " + fp + ", which no trust store binds to " + claim +
                " (the manifest's claim); give --trusted-devices with the lab CA or <device-id>.pub keys"};
  auto store = load_trust_store(dir);
  if (!store) return {"device", Outcome::kFailed, store.error().to_string()};
  std::vector<const TrustedDevice*> bound;  // the store's bindings of this key
  for (const auto& t : *store)
    if (t.key_fingerprint == fp) bound.push_back(&t);
  if (bound.empty())
    return {"device", Outcome::kFailed, "device key " + fp + " of " + claim + " is not among the " +
                                            std::to_string(store->size()) + " trusted keys in " + dir};
  for (const auto* t : bound)
    if (t->device_id == m.device.id && !t->revoked)
      return {"device", Outcome::kPassed, "key " + fp + " is bound to " + claim + " by " + t->source};
  for (const auto* t : bound)
    if (t->device_id == m.device.id)
      return {"device", Outcome::kFailed, "the binding of key " + fp + " to " + claim + " (" + t->source +
                                              ") was revoked " + *t->revoked};
  return {"device", Outcome::kFailed, "key " + fp + " belongs to device '" + bound[0]->device_id + "' (" +
                                          bound[0]->source + "), but the manifest claims " + claim +
                                          ": a trusted key signed for another device's id"};
}

}  // namespace

Result<std::vector<TrustedDevice>> load_trust_store(const std::string& dir) {
  struct stat st;
  if (stat((dir + "/index.jsonl").c_str(), &st) == 0) return load_lab_ca(dir);
  return load_key_folder(dir);
}

std::optional<std::string> incomplete_capture(const bundle::Manifest& m) {
  const json::Json& c = m.context;
  if (!c.is_object() || !c.contains("capture_complete") || c["capture_complete"] != false) return std::nullopt;
  std::string what = "INCOMPLETE capture: the target exited during it";
  if (c.contains("target_exited_during_capture") && c["target_exited_during_capture"].is_string())
    what += " (" + c["target_exited_during_capture"].get<std::string>() + ")";
  if (c.contains("bytes_not_read") && c["bytes_not_read"].is_number_unsigned())
    what += "; " + std::to_string(c["bytes_not_read"].get<uint64_t>()) + " bytes could not be read and are zeros in the core";
  return what;
}

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::kPassed: return "passed";
    case Outcome::kNotRun: return "not run";
    case Outcome::kFailed: return "failed";
  }
  return "?";
}

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::kAttributed: return "attributed";
    case Verdict::kIdentityUnverified: return "identity_unverified";
    case Verdict::kFailed: return "failed";
  }
  return "?";
}

const char* verdict_words(Verdict v) {
  switch (v) {
    case Verdict::kAttributed: return "INTACT AND ATTRIBUTED";
    case Verdict::kIdentityUnverified: return "INTACT, IDENTITY UNVERIFIED";
    case Verdict::kFailed: return "VERIFICATION FAILED";
  }
  return "?";
}

bool VerifyReport::intact() const {
  return !lines.empty() &&
         std::none_of(lines.begin(), lines.end(), [](auto& l) { return l.outcome == Outcome::kFailed; });
}

Verdict VerifyReport::verdict() const {
  if (!intact()) return Verdict::kFailed;
  const bool attributed =
      std::any_of(lines.begin(), lines.end(), [](auto& l) { return l.check == "device" && l.ok(); });
  return attributed ? Verdict::kAttributed : Verdict::kIdentityUnverified;
}

json::Json VerifyReport::to_json() const {
  json::Json checks = json::Json::array();
  for (const auto& l : lines)
    checks.push_back({{"check", l.check}, {"result", outcome_name(l.outcome)}, {"ok", l.ok()}, {"detail", l.detail}});
  const Verdict v = verdict();
  json::Json j = {{"verdict", verdict_name(v)}, {"summary", verdict_words(v)}, {"intact", intact()},
                  {"attributed", v == Verdict::kAttributed}, {"checks", checks},
                  {"capture_complete", capture_complete ? json::Json(*capture_complete) : json::Json(nullptr)}};
  if (incomplete_capture) j["capture_incomplete"] = *incomplete_capture;
  return j;
}

namespace {

template <class T>
Status status_of(const Result<T>& r) {
  if (r) return {};
  return fail(r.error());
}

// The stored chain and receipt against the bundle: the chain verifies and begins with the
// bundle's own events; the receipt is signed by the key of the intake's 'received' event,
// names this bundle, and anchors that event.
Status check_stored(const bundle::BundleReader& reader, const custody::CustodyLog& log,
                    const wire::SignedReceipt& signed_receipt, std::string& detail) {
  MLFX_ASSIGN(custody::ChainReport chain, log.verify());
  const auto& own = reader.custody().events();
  const auto& all = log.events();
  if (all.size() <= own.size() || !std::equal(own.begin(), own.end(), all.begin()))
    return fail(Errc::kCorrupt, "the stored custody log does not extend the bundle's own chain");
  const wire::Receipt& r = signed_receipt.receipt;
  MLFX_ASSIGN(std::string digest, reader.digest());
  if (r.bundle_digest != digest || r.bundle_id != reader.manifest().bundle_id_hex())
    return fail(Errc::kCorrupt, "the receipt names bundle digest " + r.bundle_digest + ", not this bundle's " + digest);
  auto received = std::find_if(all.begin() + own.size(), all.end(), [&](const json::Json& ev) {
    return custody::event_hash(ev) == r.custody_event_sha256;
  });
  if (received == all.end() || received->value("type", "") != "received")
    return fail(Errc::kCorrupt, "the receipt anchors no 'received' event of the stored custody log");
  const json::Json& actor = (*received)["actor"];
  auto raw = from_base64(actor.value("public_key", ""));
  if (!raw) return fail(Errc::kCorrupt, "the 'received' event's actor key is not base64");
  MLFX_ASSIGN(crypto::VerifyKey intake, crypto::VerifyKey::from_raw(*raw));
  if (intake.fingerprint() != r.intake_key_fingerprint ||
      !intake.verify(wire::receipt_signing_message(r), signed_receipt.signature))
    return fail(Errc::kCorrupt, "the receipt is not signed by the intake key of the 'received' event");
  std::string types;
  for (const auto& t : chain.types) types += (types.empty() ? "" : ", ") + t;
  detail = "received by intake '" + actor.value("id", "?") + "' at " + r.received_utc + " (key " + intake.fingerprint() +
           "), receipt signed by that key; " + std::to_string(chain.events) + " events (" + types + ")";
  return {};
}

}  // namespace

StoredCustody stored_custody(const bundle::BundleReader& reader) {
  StoredCustody out;
  out.events = reader.custody().events();
  // Only an intake store object has the store's sidecars: <digest>.mlfx.
  const std::string& path = reader.path();
  auto digest = reader.digest();
  const size_t slash = path.find_last_of('/');
  if (!digest || !path.ends_with(".mlfx") || path.compare(slash + 1, std::string::npos, *digest + ".mlfx") != 0)
    return out;
  const std::string stem = path.substr(0, path.size() - 5);
  struct stat st;
  const bool has_log = stat((stem + ".custody.jsonl").c_str(), &st) == 0;
  const bool has_receipt = stat((stem + ".receipt.json").c_str(), &st) == 0;
  if (!has_log && !has_receipt) return out;
  auto fail_with = [&](const std::string& why) {
    out.check = {"stored custody", Outcome::kFailed, why};
    return out;
  };
  if (!has_log || !has_receipt)
    return fail_with("the intake store holds " + std::string(has_log ? "a custody log but no receipt" : "a receipt but no custody log") +
                     " for this bundle (" + stem + ".*): the store is incomplete");
  auto text = read_small_file(stem + ".custody.jsonl", kMaxCustodyLog);
  if (!text) return fail_with(text.error().to_string());
  auto log = custody::CustodyLog::parse(*text, reader.manifest().bundle_id_hex());
  if (!log) return fail_with("stored custody log: " + log.error().to_string());
  auto receipt_text = read_small_file(stem + ".receipt.json", wire::kMaxControlBody);
  if (!receipt_text) return fail_with(receipt_text.error().to_string());
  auto receipt = wire::parse_receipt(as_bytes(*receipt_text));
  if (!receipt) return fail_with("stored receipt: " + receipt.error().to_string());
  std::string detail;
  if (auto st = check_stored(reader, *log, *receipt, detail); !st) return fail_with(st.error().to_string());
  out.events = log->events();
  out.receipt = wire::to_json(*receipt);
  out.check = {"stored custody", Outcome::kPassed, detail};
  out.log = std::move(*log);
  return out;
}

namespace {

// Runs the structure, signature, device, custody and stored-custody checks shared by verify
// and open; returns the reader for further work. A check that fails ends the run; the device
// check that cannot run (no trust store) does not.
Result<bundle::BundleReader> check_bundle(const std::string& path, const std::string& trusted_dir,
                                          VerifyReport& report, bool check_chunks, bool progress,
                                          StoredCustody* stored_out = nullptr) {
  auto add = [&](const char* check, const Status& st, std::string detail) {
    report.lines.push_back({check, st ? Outcome::kPassed : Outcome::kFailed,
                            st ? std::move(detail) : st.error().to_string()});
    return st.has_value();
  };
  auto reader = bundle::BundleReader::open(path);
  if (!reader) {
    add("structure", fail(reader.error()), "");
    return fail(std::move(reader).error());
  }
  const bundle::Manifest& m = reader->manifest();
  uint64_t chunks = 0;
  for (const auto& s : reader->layout()) chunks += s.chunks.size();
  add("structure", {}, "format 1.0, bundle " + m.bundle_id_hex() + ", " + std::to_string(m.streams.size()) +
                           " streams, " + std::to_string(chunks) + " chunks");
  if (auto st = reader->verify_signature(); !add("signature", st, "Ed25519 manifest signature valid"))
    return fail(st.error());
  report.incomplete_capture = incomplete_capture(m);
  if (m.context.is_object() && m.context.contains("capture_complete") && m.context["capture_complete"].is_boolean())
    report.capture_complete = m.context["capture_complete"].get<bool>();
  report.lines.push_back(check_device(m, trusted_dir));
  if (report.lines.back().outcome == Outcome::kFailed) return fail(Errc::kUntrusted, report.lines.back().detail);
  if (check_chunks) {
    std::optional<Progress> bar;
    if (progress) bar.emplace("verifying", reader->file_size());
    auto st = reader->verify_chunks(bar ? &*bar : nullptr);
    if (bar) bar->finish();
    if (!add("chunks", st, std::to_string(chunks) + " sealed chunks match the signed chunk tables"))
      return fail(st.error());
  }
  auto chain = reader->verify_custody();
  std::string events;
  if (chain)
    for (const auto& t : chain->types) events += (events.empty() ? "" : ", ") + t;
  if (!add("custody", status_of(chain),
           chain ? std::to_string(chain->events) + " events (" + events + "), chain and signatures intact" : ""))
    return fail(chain.error());
  StoredCustody stored = stored_custody(*reader);
  if (stored.check.outcome != Outcome::kNotRun) report.lines.push_back(stored.check);
  if (stored.check.outcome == Outcome::kFailed) return fail(Errc::kCorrupt, stored.check.detail);
  if (stored_out) *stored_out = std::move(stored);
  return std::move(*reader);
}

}  // namespace

namespace {

// Files written by open_bundle, removed again unless committed.
class OutputDir {
 public:
  explicit OutputDir(std::string dir) : dir_(std::move(dir)) {}
  ~OutputDir() {
    if (committed_) return;
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) unlink(it->c_str());
    if (created_dir_) rmdir(dir_.c_str());
  }
  Status prepare() {
    if (mkdir(dir_.c_str(), 0750) == 0) {
      created_dir_ = true;
      return {};
    }
    if (errno != EEXIST) return fail(Errc::kIo, "cannot create " + dir_ + ": " + errno_text(errno));
    DIR* d = opendir(dir_.c_str());
    if (!d) return fail(Errc::kIo, "cannot read " + dir_ + ": " + errno_text(errno));
    bool empty = true;
    while (dirent* e = readdir(d))
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") empty = false;
    closedir(d);
    if (!empty)
      return fail(Errc::kExists, "output directory " + dir_ + " is not empty; choose a new one");
    return {};
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  void track(const std::string& path) { created_.push_back(path); }
  void commit() { committed_ = true; }

 private:
  std::string dir_;
  std::vector<std::string> created_;
  bool created_dir_ = false, committed_ = false;
};

// Writes an opened stream's chunk at its offset and starts its writeback at once, so that the
// fsync ending the file has little left to wait for: the disk works while the next chunks are
// decrypted. The hint is the lab's I/O policy; some file systems refuse it.
Status write_and_start_writeback(File& f, uint64_t at, ByteView chunk) {
  MLFX_TRY(f.pwrite_all(at, chunk));
  (void)sync_file_range(f.fd(), static_cast<off_t>(at), static_cast<off_t>(chunk.size()), SYNC_FILE_RANGE_WRITE);
  return {};
}

}  // namespace

VerifyReport verify_bundle(const std::string& path, const VerifyOptions& options) {
  VerifyReport report;
  (void)check_bundle(path, options.trusted_devices_dir, report, true, options.show_progress);
  return report;
}

Result<OpenResult> open_bundle(const std::string& path, const crypto::SecretKeyFile& lab,
                               const std::string& out_dir, const OpenOptions& options) {
  if (!lab.box || !lab.signing)
    return fail(Errc::kInvalidArgument, "a lab key is needed to open a bundle (this is a device key); "
                                        "create one with 'mlfx keys gen --kind lab'");
  VerifyReport report;
  StoredCustody stored;
  // Chunk hashes are checked during decryption, so the separate pass is skipped here.
  MLFX_ASSIGN(bundle::BundleReader reader,
              check_bundle(path, options.trusted_devices_dir, report, false, options.show_progress, &stored));
  MLFX_ASSIGN(SecretBytes key, reader.unwrap_data_key(*lab.box));
  const bundle::Manifest& m = reader.manifest();

  OutputDir out(out_dir);
  MLFX_TRY(out.prepare());
  OpenResult result;
  std::string sums;
  json::Json files = json::Json::array();
  std::vector<std::pair<std::string, std::string>> renames;  // partial -> final
  for (size_t i = 0; i < m.streams.size(); ++i) {
    const auto& s = m.streams[i];
    const std::string partial = out.path("." + s.name + ".partial");
    MLFX_ASSIGN(File f, File::create_new(partial, 0440));
    out.track(partial);
    std::optional<Progress> bar;
    if (options.show_progress) bar.emplace("opening " + s.name, s.size);
    MLFX_TRY(reader.decrypt_stream_at(i, key.view(),
                                      [&](uint64_t at, ByteView pt) { return write_and_start_writeback(f, at, pt); },
                                      bar ? &*bar : nullptr));
    if (bar) bar->finish();
    MLFX_TRY(f.sync());
    MLFX_TRY(f.close());
    renames.emplace_back(partial, out.path(s.name));
    sums += s.sha256 + "  " + s.name + "\n";
    files.push_back({{"name", s.name}, {"size", s.size}, {"sha256", s.sha256}});
    result.files.push_back(s.name);
  }
  // Streams get their real names only once every one of them has been authenticated.
  for (const auto& [partial, final_path] : renames) {
    if (rename(partial.c_str(), final_path.c_str()) != 0)
      return fail(Errc::kIo, "cannot rename " + partial + ": " + errno_text(errno));
    out.track(final_path);
  }

  auto write = [&](const std::string& name, std::string_view data) -> Status {
    MLFX_TRY(write_new_file(out.path(name), data, 0440));
    out.track(out.path(name));
    result.files.push_back(name);
    return {};
  };
  MLFX_TRY(write("manifest.json", reader.manifest_bytes()));
  MLFX_TRY(write("manifest.sig", as_chars(reader.signature())));
  sums += crypto::sha256_hex(as_bytes(reader.manifest_bytes())) + "  manifest.json\n";
  sums += crypto::sha256_hex(reader.signature()) + "  manifest.sig\n";

  report.lines.push_back({"chunks", Outcome::kPassed, "every chunk matched its signed hash and authenticated "
                                                     "(AES-256-GCM); every stream re-hashed"});
  // The chain as stored: with the intake's 'received' event when the bundle came through one.
  custody::CustodyLog log = stored.log ? *stored.log : reader.custody();
  HostIdentity host = local_host_identity();
  json::Json checks = report.to_json();
  MLFX_TRY(log.append("opened", {"lab", host.hostname, host.hostname, host.user}, *lab.signing,
                      {{"bundle", path}, {"output", out_dir}, {"lab_key", lab.box->public_key().fingerprint()}},
                      {{"verification", checks}, {"files", files}}));
  MLFX_TRY(write("custody.jsonl", log.serialize()));
  MLFX_TRY(write("SHA256SUMS", sums));
  out.commit();
  result.report = std::move(report);
  return result;
}

const File* DecryptedStreams::find(std::string_view name) const {
  for (const auto& [n, f] : files)
    if (n == name) return &f;
  return nullptr;
}

Result<DecryptedStreams> decrypt_streams_to_memory(const std::string& path, const crypto::SecretKeyFile& lab,
                                                   const std::vector<std::string>& wanted, const OpenOptions& options) {
  if (!lab.box)
    return fail(Errc::kInvalidArgument, "a lab key is needed to decrypt a bundle (this is a device key)");
  DecryptedStreams out;
  MLFX_ASSIGN(bundle::BundleReader reader,
              check_bundle(path, options.trusted_devices_dir, out.report, false, options.show_progress));
  MLFX_ASSIGN(SecretBytes key, reader.unwrap_data_key(*lab.box));
  std::string decrypted;
  for (const std::string& stream : wanted) {
    const bundle::StreamInfo* info = reader.manifest().find_stream(stream);
    if (!info) continue;
    MLFX_ASSIGN(File file, File::create_memory("mlfx-" + stream));
    std::optional<Progress> bar;
    if (options.show_progress) bar.emplace("decrypting " + stream, info->size);
    MLFX_TRY(reader.decrypt_stream_at(info->index, key.view(),
                                      [&](uint64_t at, ByteView b) { return file.pwrite_all(at, b); },
                                      bar ? &*bar : nullptr));
    if (bar) bar->finish();
    out.files.emplace_back(stream, std::move(file));
    decrypted += (decrypted.empty() ? "" : ", ") + stream;
  }
  if (out.files.empty()) return fail(Errc::kNotFound, path + " holds none of the streams wanted here");
  out.report.lines.push_back({"chunks", Outcome::kPassed, "stream(s) " + decrypted + " authenticated and re-hashed"});
  out.manifest = reader.manifest();
  return out;
}

Result<DecryptedStream> decrypt_stream_to_memory(const std::string& path, const crypto::SecretKeyFile& lab,
                                                 const std::string& stream, const OpenOptions& options) {
  // One stream is several with one wanted; its absence is the caller's error.
  auto all = decrypt_streams_to_memory(path, lab, {stream}, options);
  if (!all && all.error().code() == Errc::kNotFound)
    return fail(Errc::kNotFound, path + " has no stream named '" + stream + "'");
  if (!all) return fail(std::move(all).error());
  return DecryptedStream{std::move(all->files.front().second), std::move(all->manifest), std::move(all->report)};
}

}  // namespace mlfx::evidence
