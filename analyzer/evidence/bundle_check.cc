#include "evidence/bundle_check.h"

#include <dirent.h>
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

namespace mlfx::evidence {

Result<std::vector<crypto::VerifyKey>> load_trusted_devices(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return fail(Errc::kNotFound, "cannot read trusted-devices directory " + dir + ": " + errno_text(errno));
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".pub") == 0) names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  std::vector<crypto::VerifyKey> keys;
  for (const auto& n : names) {
    auto k = crypto::load_public_key_file(dir + "/" + n);
    if (!k) return fail(std::move(k).error().context("trusted devices"));
    if (k->kind != crypto::KeyKind::kDevice)
      return fail(Errc::kInvalidArgument, "trusted devices: " + dir + "/" + n +
                                              " is a lab key, not a device key; remove it from " + dir);
    keys.push_back(*k->verify);
  }
  if (keys.empty())
    return fail(Errc::kNotFound, "no *.pub device keys in trusted-devices directory " + dir);
  return keys;
}

bool VerifyReport::intact() const {
  return !lines.empty() && std::all_of(lines.begin(), lines.end(), [](auto& l) { return l.ok; });
}

json::Json VerifyReport::to_json() const {
  json::Json checks = json::Json::array();
  for (const auto& l : lines) checks.push_back({{"check", l.check}, {"ok", l.ok}, {"detail", l.detail}});
  return {{"intact", intact()}, {"checks", checks}};
}

namespace {

template <class T>
Status status_of(const Result<T>& r) {
  if (r) return {};
  return fail(r.error());
}

// Checks that the device key is in the trust store, when one is given.
Result<std::string> check_device_trust(const bundle::Manifest& m, const std::string& dir) {
  if (dir.empty())
    return "key " + m.device.key_fingerprint + " (not checked against trusted devices)";
  MLFX_ASSIGN(auto keys, load_trusted_devices(dir));
  for (const auto& k : keys)
    if (k.fingerprint() == m.device.key_fingerprint)
      return "key " + m.device.key_fingerprint + " is trusted";
  return fail(Errc::kUntrusted, "device key " + m.device.key_fingerprint + " of device '" + m.device.id +
                                    "' is not among the " + std::to_string(keys.size()) +
                                    " trusted keys in " + dir);
}

// Runs the structure, signature, trust and custody checks shared by verify and open;
// returns the reader for further work.
Result<bundle::BundleReader> check_bundle(const std::string& path, const std::string& trusted_dir,
                                          VerifyReport& report, bool check_chunks, bool progress) {
  auto add = [&](const char* check, const Status& st, std::string detail) {
    report.lines.push_back({check, st.has_value(), st ? std::move(detail) : st.error().to_string()});
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
  auto trust = check_device_trust(m, trusted_dir);
  if (!add("device", status_of(trust), trust ? *trust : ""))
    return fail(trust.error());
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
  return std::move(*reader);
}

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
  // Chunk hashes are checked during decryption, so the separate pass is skipped here.
  MLFX_ASSIGN(bundle::BundleReader reader,
              check_bundle(path, options.trusted_devices_dir, report, false, options.show_progress));
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
    MLFX_TRY(reader.decrypt_stream(i, key.view(), [&](ByteView pt) { return f.write_all(pt); },
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

  report.lines.push_back({"chunks", true, "every chunk matched its signed hash and authenticated "
                                          "(AES-256-GCM); every stream re-hashed"});
  custody::CustodyLog log = reader.custody();
  HostIdentity host = local_host_identity();
  json::Json checks = report.to_json();
  MLFX_TRY(log.append("opened", {"lab", host.hostname, host.hostname, host.user}, *lab.signing,
                      {{"bundle", path}, {"output", out_dir}, {"lab_key", lab.box->public_key().fingerprint()}},
                      {{"verification", checks}, {"files", files}}));
  MLFX_TRY(write("custody.jsonl", log.serialize()));
  MLFX_TRY(write("SHA256SUMS", sums));
  out.commit();
  return result;
}

Result<DecryptedStream> decrypt_stream_to_memory(const std::string& path, const crypto::SecretKeyFile& lab,
                                                 const std::string& stream, const OpenOptions& options) {
  if (!lab.box)
    return fail(Errc::kInvalidArgument, "a lab key is needed to decrypt a bundle (this is a device key)");
  DecryptedStream out;
  MLFX_ASSIGN(bundle::BundleReader reader,
              check_bundle(path, options.trusted_devices_dir, out.report, false, options.show_progress));
  const bundle::StreamInfo* info = reader.manifest().find_stream(stream);
  if (!info) return fail(Errc::kNotFound, path + " has no stream named '" + stream + "'");
  MLFX_ASSIGN(SecretBytes key, reader.unwrap_data_key(*lab.box));
  MLFX_ASSIGN(out.file, File::create_memory("mlfx-" + stream));
  std::optional<Progress> bar;
  if (options.show_progress) bar.emplace("decrypting " + stream, info->size);
  MLFX_TRY(reader.decrypt_stream(info->index, key.view(), [&](ByteView b) { return out.file.write_all(b); },
                                 bar ? &*bar : nullptr));
  if (bar) bar->finish();
  out.report.lines.push_back({"chunks", true, "stream " + stream + " authenticated and re-hashed"});
  out.manifest = reader.manifest();
  return out;
}

}  // namespace mlfx::evidence
