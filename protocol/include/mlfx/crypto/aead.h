// AES-256-GCM with a context reused across chunks, and the wrapping of data keys for
// X25519 recipients (ECIES: ephemeral X25519, HKDF-SHA256, AES-256-GCM).
#pragma once

#include <memory>
#include <string>

#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::crypto {

inline constexpr size_t kDataKeySize = 32;
inline constexpr size_t kNonceSize = 12;
inline constexpr size_t kTagSize = 16;

class Aes256Gcm {
 public:
  static Result<Aes256Gcm> create(ByteView key);
  Aes256Gcm(Aes256Gcm&&) noexcept;
  Aes256Gcm& operator=(Aes256Gcm&&) noexcept;
  ~Aes256Gcm();

  // out must hold plaintext.size() bytes; tag receives kTagSize bytes. out may equal plaintext.
  Status seal(ByteView nonce, ByteView aad, ByteView plaintext, uint8_t* out, uint8_t* tag);
  // Returns false (not an error) when the tag does not authenticate; out is then garbage
  // and must be discarded by the caller.
  Result<bool> open(ByteView nonce, ByteView aad, ByteView ciphertext, ByteView tag,
                    uint8_t* out);

 private:
  struct Impl;
  explicit Aes256Gcm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

SecretBytes random_secret(size_t n);
Bytes random_bytes(size_t n);

// HKDF-SHA256 (RFC 5869).
Result<SecretBytes> hkdf_sha256(ByteView ikm, ByteView salt, ByteView info, size_t length);
// HMAC-SHA256.
Result<Bytes> hmac_sha256(ByteView key, ByteView message);

// A data key wrapped for one recipient.
struct WrappedKey {
  std::string recipient_fingerprint;
  Bytes ephemeral_public;  // X25519, 32 bytes
  Bytes nonce;             // 12 bytes
  Bytes ciphertext;        // 32-byte key + 16-byte tag
};

// `context` (the bundle id) is bound into the KDF and the AAD, so a wrapped key cannot be
// moved to another bundle.
Result<WrappedKey> wrap_data_key(const BoxPublicKey& recipient, ByteView data_key,
                                 ByteView context);
// Fails with Errc::kCorrupt when `w` was not made for `me` and `context`.
Result<SecretBytes> unwrap_data_key(const BoxSecretKey& me, const WrappedKey& w,
                                    ByteView context);

}  // namespace mlfx::crypto
