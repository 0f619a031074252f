#include "mlfx/bundle/manifest.h"

#include <cstdio>
#include <cstring>
#include <set>

namespace mlfx::bundle {

using json::Json;

Json Manifest::to_json() const {
  Json streams_j = Json::array();
  for (const auto& s : streams) {
    Json j = {{"index", s.index},
              {"name", s.name},
              {"source", s.source},
              {"size", s.size},
              {"chunks", s.chunks},
              {"sha256", s.sha256},
              {"chunk_table_sha256", s.chunk_table_sha256},
              {"started_utc", s.started_utc},
              {"finished_utc", s.finished_utc}};
    if (s.md5) j["md5"] = *s.md5;
    if (s.sha1) j["sha1"] = *s.sha1;
    streams_j.push_back(std::move(j));
  }
  Json rcpt = Json::array();
  for (const auto& r : recipients)
    rcpt.push_back({{"fingerprint", r.recipient_fingerprint},
                    {"ephemeral_public", to_base64(r.ephemeral_public)},
                    {"nonce", to_base64(r.nonce)},
                    {"wrapped_key", to_base64(r.ciphertext)}});
  return Json{
      {"format", "mlfx-bundle"},
      {"format_version", std::to_string(format_major) + "." + std::to_string(format_minor)},
      {"bundle_id", bundle_id_hex()},
      {"chunk_size", chunk_size},
      {"case_id", case_id},
      {"note", note},
      {"device",
       {{"id", device.id},
        {"hostname", device.hostname},
        {"machine_id", device.machine_id},
        {"key_fingerprint", device.key_fingerprint},
        {"public_key", to_base64(device.public_key)},
        {"key_algorithm", "Ed25519"}}},
      {"tool",
       {{"name", tool.name},
        {"version", tool.version},
        {"command", tool.command},
        {"parameters", tool.parameters}}},
      {"created_utc", created_utc},
      {"sealed_utc", sealed_utc},
      {"time_zone", "UTC"},
      {"encryption",
       {{"cipher", "AES-256-GCM"},
        {"key_wrap", "X25519-HKDF-SHA256-AES-256-GCM"},
        {"key_commitment", to_hex(key_commitment)},
        {"recipients", rcpt}}},
      {"chunk_hash", "SHA-256"},
      {"streams", streams_j},
      {"context", context}};
}

Result<Manifest> Manifest::parse(std::string_view text) {
  MLFX_ASSIGN(Json j, json::parse(text, "manifest"));
  const std::string w = "manifest";
  Manifest m;
  MLFX_ASSIGN(std::string format, json::get_string(j, "format", w));
  if (format != "mlfx-bundle") return fail(Errc::kBadFormat, "manifest: format is not mlfx-bundle");
  MLFX_ASSIGN(std::string version, json::get_string(j, "format_version", w));
  unsigned major = 0, minor = 0;
  char tail = 0;
  if (std::sscanf(version.c_str(), "%u.%u%c", &major, &minor, &tail) != 2 || major > 0xffff ||
      minor > 0xffff || version != std::to_string(major) + "." + std::to_string(minor))
    return fail(Errc::kBadFormat, "manifest: format_version '" + version + "' is not MAJOR.MINOR");
  if (major != kFormatMajor)
    return fail(Errc::kUnsupported, "manifest: format_version " + version + " is not supported (reads 1.x)");
  m.format_major = static_cast<uint16_t>(major);
  m.format_minor = static_cast<uint16_t>(minor);
  MLFX_ASSIGN(Bytes id, json::get_hex(j, "bundle_id", kBundleIdSize, w));
  std::memcpy(m.bundle_id.data(), id.data(), kBundleIdSize);
  MLFX_ASSIGN(uint64_t chunk_size, json::get_uint(j, "chunk_size", w));
  if (chunk_size < kMinChunkSize || chunk_size > kMaxChunkSize)
    return fail(Errc::kBadFormat, "manifest: chunk_size out of range");
  m.chunk_size = static_cast<uint32_t>(chunk_size);
  MLFX_ASSIGN(m.case_id, json::get_string(j, "case_id", w));
  MLFX_ASSIGN(m.note, json::get_string(j, "note", w));

  MLFX_ASSIGN(const Json* dev, json::get_object(j, "device", w));
  const std::string wd = "manifest.device";
  MLFX_ASSIGN(m.device.id, json::get_string(*dev, "id", wd));
  MLFX_ASSIGN(m.device.hostname, json::get_string(*dev, "hostname", wd));
  MLFX_ASSIGN(m.device.machine_id, json::get_string(*dev, "machine_id", wd));
  MLFX_ASSIGN(m.device.key_fingerprint, json::get_string(*dev, "key_fingerprint", wd));
  MLFX_ASSIGN(m.device.public_key, json::get_base64(*dev, "public_key", crypto::kRawKeySize, wd));
  MLFX_ASSIGN(std::string key_alg, json::get_string(*dev, "key_algorithm", wd));
  if (key_alg != "Ed25519") return fail(Errc::kUnsupported, "manifest: device key algorithm " + key_alg);
  MLFX_ASSIGN(std::string chunk_hash, json::get_string(j, "chunk_hash", w));
  if (chunk_hash != "SHA-256") return fail(Errc::kUnsupported, "manifest: chunk hash " + chunk_hash);
  MLFX_ASSIGN(std::string zone, json::get_string(j, "time_zone", w));
  if (zone != "UTC") return fail(Errc::kBadFormat, "manifest: time_zone must be UTC");

  MLFX_ASSIGN(const Json* tool, json::get_object(j, "tool", w));
  MLFX_ASSIGN(m.tool.name, json::get_string(*tool, "name", "manifest.tool"));
  MLFX_ASSIGN(m.tool.version, json::get_string(*tool, "version", "manifest.tool"));
  MLFX_ASSIGN(m.tool.command, json::get_string(*tool, "command", "manifest.tool"));
  MLFX_ASSIGN(const Json* params, json::get_object(*tool, "parameters", "manifest.tool"));
  m.tool.parameters = *params;

  MLFX_ASSIGN(m.created_utc, json::get_string(j, "created_utc", w));
  MLFX_ASSIGN(m.sealed_utc, json::get_string(j, "sealed_utc", w));

  MLFX_ASSIGN(const Json* enc, json::get_object(j, "encryption", w));
  const std::string we = "manifest.encryption";
  MLFX_ASSIGN(std::string cipher, json::get_string(*enc, "cipher", we));
  MLFX_ASSIGN(std::string wrap, json::get_string(*enc, "key_wrap", we));
  if (cipher != "AES-256-GCM" || wrap != "X25519-HKDF-SHA256-AES-256-GCM")
    return fail(Errc::kUnsupported, "manifest: unsupported cipher " + cipher + " / " + wrap);
  MLFX_ASSIGN(m.key_commitment, json::get_hex(*enc, "key_commitment", 32, we));
  MLFX_ASSIGN(const Json* rcpts, json::get_array(*enc, "recipients", we));
  if (rcpts->empty()) return fail(Errc::kBadFormat, "manifest: no recipients");
  for (size_t i = 0; i < rcpts->size(); ++i) {
    const Json& r = (*rcpts)[i];
    const std::string wr = "manifest recipient " + std::to_string(i);
    crypto::WrappedKey k;
    MLFX_ASSIGN(k.recipient_fingerprint, json::get_string(r, "fingerprint", wr));
    for (const auto& earlier : m.recipients)
      if (earlier.recipient_fingerprint == k.recipient_fingerprint)
        return fail(Errc::kBadFormat, wr + ": recipient listed twice");
    MLFX_ASSIGN(k.ephemeral_public, json::get_base64(r, "ephemeral_public", crypto::kRawKeySize, wr));
    MLFX_ASSIGN(k.nonce, json::get_base64(r, "nonce", crypto::kNonceSize, wr));
    MLFX_ASSIGN(k.ciphertext,
                json::get_base64(r, "wrapped_key", crypto::kDataKeySize + crypto::kTagSize, wr));
    m.recipients.push_back(std::move(k));
  }

  MLFX_ASSIGN(const Json* streams, json::get_array(j, "streams", w));
  if (streams->size() > kMaxStreams) return fail(Errc::kBadFormat, "manifest: too many streams");
  std::set<std::string> names;
  for (size_t i = 0; i < streams->size(); ++i) {
    const Json& sj = (*streams)[i];
    const std::string ws = "manifest stream " + std::to_string(i);
    StreamInfo s;
    MLFX_ASSIGN(uint64_t index, json::get_uint(sj, "index", ws));
    if (index != i) return fail(Errc::kBadFormat, ws + ": index is " + std::to_string(index));
    s.index = static_cast<uint32_t>(i);
    MLFX_ASSIGN(s.name, json::get_string(sj, "name", ws));
    if (!is_valid_stream_name(s.name))
      return fail(Errc::kBadFormat, ws + ": invalid stream name '" + s.name + "'");
    if (!names.insert(s.name).second)
      return fail(Errc::kBadFormat, ws + ": duplicate stream name '" + s.name + "'");
    MLFX_ASSIGN(s.source, json::get_string(sj, "source", ws));
    MLFX_ASSIGN(s.size, json::get_uint(sj, "size", ws));
    MLFX_ASSIGN(s.chunks, json::get_uint(sj, "chunks", ws));
    MLFX_ASSIGN(Bytes sha, json::get_hex(sj, "sha256", 32, ws));
    s.sha256 = to_hex(sha);
    MLFX_ASSIGN(Bytes tbl, json::get_hex(sj, "chunk_table_sha256", 32, ws));
    s.chunk_table_sha256 = to_hex(tbl);
    if (sj.contains("md5") || sj.contains("sha1")) {
      MLFX_ASSIGN(Bytes md5, json::get_hex(sj, "md5", 16, ws));
      MLFX_ASSIGN(Bytes sha1, json::get_hex(sj, "sha1", 20, ws));
      s.md5 = to_hex(md5);
      s.sha1 = to_hex(sha1);
    }
    MLFX_ASSIGN(s.started_utc, json::get_string(sj, "started_utc", ws));
    MLFX_ASSIGN(s.finished_utc, json::get_string(sj, "finished_utc", ws));
    m.streams.push_back(std::move(s));
  }
  if (auto it = j.find("context"); it != j.end()) {
    if (!it->is_object()) return fail(Errc::kBadFormat, "manifest: context must be an object");
    m.context = *it;
  }
  return m;
}

const StreamInfo* Manifest::find_stream(std::string_view name) const {
  for (const auto& s : streams)
    if (s.name == name) return &s;
  return nullptr;
}

Bytes manifest_signing_message(std::string_view manifest_bytes) {
  Bytes msg(kManifestSignatureContext.begin(), kManifestSignatureContext.end());
  msg.insert(msg.end(), manifest_bytes.begin(), manifest_bytes.end());
  return msg;
}

Result<Bytes> key_commitment(ByteView data_key, const BundleId& id) {
  Bytes msg(kKeyCommitmentContext.begin(), kKeyCommitmentContext.end());
  msg.insert(msg.end(), id.begin(), id.end());
  return crypto::hmac_sha256(data_key, msg);
}

}  // namespace mlfx::bundle
