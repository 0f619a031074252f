// Device keys (Ed25519, sign manifests and custody events) and lab keys (X25519 to receive
// wrapped data keys, plus Ed25519 to sign the lab's own custody events).
//
// Files are PEM so that stock OpenSSL reads them: PREFIX.key holds PKCS#8 private keys
// (mode 0600), PREFIX.pub the SubjectPublicKeyInfo of each. A fingerprint is
// "sha256:" + hex SHA-256 of the key's DER SubjectPublicKeyInfo, i.e.
//   openssl pkey -pubin -in X.pub -outform DER | sha256sum
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace mlfx::crypto {

inline constexpr size_t kRawKeySize = 32;
inline constexpr size_t kSignatureSize = 64;

enum class KeyKind { kDevice, kLab };
const char* key_kind_name(KeyKind k);

using PkeyPtr = std::shared_ptr<EVP_PKEY>;
struct SecretKeyFile;
struct PublicKeyFile;

// An Ed25519 public key.
class VerifyKey {
 public:
  static Result<VerifyKey> from_raw(ByteView raw);
  bool verify(ByteView message, ByteView signature) const;
  const Bytes& raw() const { return raw_; }
  const std::string& fingerprint() const { return fingerprint_; }
  std::string pem() const;
  // Takes shared ownership of an OpenSSL Ed25519 key.
  static Result<VerifyKey> from_pkey(PkeyPtr pkey);

 private:
  PkeyPtr pkey_;
  Bytes raw_;
  std::string fingerprint_;
};

// An Ed25519 private key. Key material lives only inside OpenSSL, which zeroises it on free.
class SigningKey {
 public:
  static Result<SigningKey> generate();
  Result<Bytes> sign(ByteView message) const;
  const VerifyKey& public_key() const { return public_; }

 private:
  friend Result<SecretKeyFile> parse_secret_key_pem(std::string_view, const std::string&);
  friend Status generate_key_files(KeyKind, const std::string&);
  PkeyPtr pkey_;
  VerifyKey public_;
};

// An X25519 public key: a recipient of wrapped data keys.
class BoxPublicKey {
 public:
  static Result<BoxPublicKey> from_raw(ByteView raw);
  const Bytes& raw() const { return raw_; }
  const std::string& fingerprint() const { return fingerprint_; }
  EVP_PKEY* pkey() const { return pkey_.get(); }
  std::string pem() const;
  // Takes shared ownership of an OpenSSL X25519 key.
  static Result<BoxPublicKey> from_pkey(PkeyPtr pkey);

 private:
  PkeyPtr pkey_;
  Bytes raw_;
  std::string fingerprint_;
};

// An X25519 private key.
class BoxSecretKey {
 public:
  static Result<BoxSecretKey> generate();
  // Raw Diffie-Hellman shared secret with `peer`; fails on a low-order peer key.
  Result<SecretBytes> agree(const BoxPublicKey& peer) const;
  const BoxPublicKey& public_key() const { return public_; }

 private:
  friend Result<SecretKeyFile> parse_secret_key_pem(std::string_view, const std::string&);
  friend Status generate_key_files(KeyKind, const std::string&);
  PkeyPtr pkey_;
  BoxPublicKey public_;
};

// What a PREFIX.key holds: a device key has `signing` only; a lab key has both.
struct SecretKeyFile {
  KeyKind kind;
  std::optional<SigningKey> signing;
  std::optional<BoxSecretKey> box;
};

// What a PREFIX.pub holds, mirroring SecretKeyFile.
struct PublicKeyFile {
  KeyKind kind;
  std::optional<VerifyKey> verify;
  std::optional<BoxPublicKey> box;
};

// The oldest queued OpenSSL error as text ("unknown OpenSSL error" when none); clears the queue.
std::string openssl_error();

// Writes PREFIX.key (0600) and PREFIX.pub; refuses if either exists.
Status generate_key_files(KeyKind kind, const std::string& prefix);

// Refuses private key files readable by group or others, like ssh does.
Result<SecretKeyFile> load_secret_key_file(const std::string& path);
Result<PublicKeyFile> load_public_key_file(const std::string& path);
Result<SecretKeyFile> parse_secret_key_pem(std::string_view pem, const std::string& origin);
Result<PublicKeyFile> parse_public_key_pem(std::string_view pem, const std::string& origin);

}  // namespace mlfx::crypto
