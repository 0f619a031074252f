// The bundle manifest: everything a court or a lab needs to know about the evidence,
// signed by the device key. Stored as canonical JSON in the MNFT record.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/bundle/format.h"
#include "mlfx/crypto/aead.h"

namespace mlfx::bundle {

struct StreamInfo {
  uint32_t index = 0;
  std::string name;
  std::string source;  // where the bytes came from, e.g. a path or "stdin"
  uint64_t size = 0;
  uint64_t chunks = 0;
  std::string sha256;  // hex, of the whole plaintext
  std::optional<std::string> md5, sha1;  // hex, for legacy tools, when requested
  std::string chunk_table_sha256;        // hex, of the whole CTBL record
  std::string started_utc, finished_utc;
};

struct DeviceInfo {
  std::string id;  // operator-chosen name, defaults to the host name
  std::string hostname;
  std::string machine_id;
  std::string key_fingerprint;
  Bytes public_key;  // Ed25519 raw
};

struct ToolInfo {
  std::string name, version, command;
  json::Json parameters = json::Json::object();
};

struct Manifest {
  BundleId bundle_id{};
  uint16_t format_major = kFormatMajor, format_minor = kFormatMinor;
  uint32_t chunk_size = kDefaultChunkSize;
  std::string case_id, note;
  DeviceInfo device;
  ToolInfo tool;
  std::string created_utc, sealed_utc;
  Bytes key_commitment;  // HMAC-SHA256(data key, context || bundle id)
  std::vector<crypto::WrappedKey> recipients;
  std::vector<StreamInfo> streams;
  json::Json context = json::Json::object();  // capture context supplied by the acquirer

  json::Json to_json() const;
  std::string serialize() const { return json::canonical(to_json()); }
  static Result<Manifest> parse(std::string_view text);
  std::string bundle_id_hex() const { return to_hex(bundle_id); }
  const StreamInfo* find_stream(std::string_view name) const;
};

// The bytes the device signs: context label || manifest bytes.
Bytes manifest_signing_message(std::string_view manifest_bytes);
Result<Bytes> key_commitment(ByteView data_key, const BundleId& id);

}  // namespace mlfx::bundle
