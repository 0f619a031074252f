// Streaming message digests (OpenSSL EVP): SHA-256 for everything, MD5/SHA-1 for legacy tools.
#pragma once

#include <memory>
#include <string>

#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx::crypto {

enum class HashAlg { kSha256, kSha1, kMd5 };
const char* hash_name(HashAlg alg);  // "sha256", "sha1", "md5"
size_t hash_size(HashAlg alg);

class Hasher {
 public:
  static Result<Hasher> create(HashAlg alg);
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  ~Hasher();

  void update(ByteView data);
  // Returns the digest and resets the hasher for reuse.
  Result<Bytes> finish();

 private:
  struct Impl;
  explicit Hasher(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One-shot SHA-256 (32 bytes).
Bytes sha256(ByteView data);
inline std::string sha256_hex(ByteView data) { return to_hex(sha256(data)); }

}  // namespace mlfx::crypto
