// Sealing and opening small bundles in tests, with in-memory keys.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "mlfx/bundle/reader.h"
#include "mlfx/bundle/writer.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::testing {

struct TestKeys {
  crypto::SecretKeyFile device;
  crypto::SecretKeyFile lab;
};

inline TestKeys make_keys() {
  TestKeys k{{crypto::KeyKind::kDevice, *crypto::SigningKey::generate(), std::nullopt},
             {crypto::KeyKind::kLab, *crypto::SigningKey::generate(), *crypto::BoxSecretKey::generate()}};
  return k;
}

using NamedData = std::vector<std::pair<std::string, std::string>>;

inline Result<bundle::Manifest> seal_strings(const std::string& path, const TestKeys& keys,
                                             const NamedData& streams,
                                             uint32_t chunk_size = bundle::kMinChunkSize,
                                             bool legacy_hashes = false) {
  MLFX_ASSIGN(File out, File::create_new(path, 0600));
  bundle::SealParams p;
  p.chunk_size = chunk_size;
  p.case_id = "case-1";
  p.note = "test";
  p.command = "test";
  p.legacy_hashes = legacy_hashes;
  MLFX_ASSIGN(auto w, bundle::BundleWriter::create(std::move(out), *keys.device.signing,
                                                    {keys.lab.box->public_key()}, p));
  for (const auto& [name, data] : streams) {
    MLFX_TRY(w.begin_stream(name, "memory"));
    MLFX_TRY(w.write(as_bytes(data)));
    MLFX_TRY(w.end_stream());
  }
  return w.finish();
}

// Decrypts every stream of an already opened reader.
inline Result<std::vector<std::string>> decrypt_all(const bundle::BundleReader& r,
                                                    const crypto::BoxSecretKey& lab) {
  MLFX_ASSIGN(SecretBytes key, r.unwrap_data_key(lab));
  std::vector<std::string> out;
  for (size_t i = 0; i < r.manifest().streams.size(); ++i) {
    std::string s;
    MLFX_TRY(r.decrypt_stream(i, key.view(), [&](ByteView b) -> Status {
      s.append(as_chars(b));
      return {};
    }, nullptr));
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace mlfx::testing
