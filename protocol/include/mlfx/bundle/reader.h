// Reads and checks a bundle. open() parses and cross-checks the structure (header, record
// grammar, chunk tables against the records, manifest against both) without trusting
// anything; the verify_* calls then check signatures and hashes, and decrypt_stream()
// authenticates and decrypts. Nothing here ever writes to the bundle.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "mlfx/base/file.h"
#include "mlfx/base/progress.h"
#include "mlfx/bundle/manifest.h"
#include "mlfx/custody/custody_log.h"

namespace mlfx::bundle {

struct StreamLayout {
  std::vector<ChunkEntry> chunks;  // from the CTBL record, equal to the walk
  uint64_t table_offset = 0;
};

class BundleReader {
 public:
  static Result<BundleReader> open(const std::string& path);

  const FileHeader& header() const { return header_; }
  const Manifest& manifest() const { return manifest_; }
  const std::string& manifest_bytes() const { return manifest_bytes_; }
  const Bytes& signature() const { return signature_; }
  const custody::CustodyLog& custody() const { return custody_; }
  const std::vector<StreamLayout>& layout() const { return streams_; }
  uint64_t file_size() const { return file_size_; }
  const std::string& path() const { return file_.path(); }

  // The manifest's signature by the device key it names. Trust in that key is separate.
  Status verify_signature() const;
  // SHA-256 of every sealed chunk record against the signed chunk tables.
  Status verify_chunks(Progress* progress) const;
  // The custody chain: links, signatures, and that it holds exactly the device's
  // acquisition and seal of this manifest.
  Result<custody::ChainReport> verify_custody() const;

  // The data key, unwrapped with the lab key and checked against the manifest commitment.
  Result<SecretBytes> unwrap_data_key(const crypto::BoxSecretKey& lab) const;
  // Authenticates and decrypts stream `index`, handing each chunk's plaintext to `sink`
  // in order; then checks the stream's size and hashes against the manifest. A sink must
  // treat what it received as unverified until this returns success.
  Status decrypt_stream(size_t index, ByteView data_key,
                        const std::function<Status(ByteView)>& sink, Progress* progress) const;

 private:
  Status walk();
  Status cross_check();
  std::string stream_label(uint32_t index) const;

  File file_;
  uint64_t file_size_ = 0;
  FileHeader header_;
  Manifest manifest_;
  std::string manifest_bytes_;
  Bytes signature_;
  custody::CustodyLog custody_{""};
  std::vector<StreamLayout> streams_;
  std::vector<std::string> table_sha256_;  // per stream, of the CTBL record as found
};

}  // namespace mlfx::bundle
