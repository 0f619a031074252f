#include "mlfx/crypto/aead.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <cstring>

namespace mlfx::crypto {

struct Aes256Gcm::Impl {
  EVP_CIPHER* cipher = nullptr;
  EVP_CIPHER_CTX* enc = nullptr;
  EVP_CIPHER_CTX* dec = nullptr;
  ~Impl() {
    EVP_CIPHER_CTX_free(enc);
    EVP_CIPHER_CTX_free(dec);
    EVP_CIPHER_free(cipher);
  }
};

Aes256Gcm::Aes256Gcm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Aes256Gcm::Aes256Gcm(Aes256Gcm&&) noexcept = default;
Aes256Gcm& Aes256Gcm::operator=(Aes256Gcm&&) noexcept = default;
Aes256Gcm::~Aes256Gcm() = default;

Result<Aes256Gcm> Aes256Gcm::create(ByteView key) {
  if (key.size() != kDataKeySize) return fail(Errc::kInvalidArgument, "AES-256 key must be 32 bytes");
  auto impl = std::make_unique<Impl>();
  impl->cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  impl->enc = EVP_CIPHER_CTX_new();
  impl->dec = EVP_CIPHER_CTX_new();
  // The key schedule is computed once; each chunk only sets a new IV.
  bool ok = impl->cipher && impl->enc && impl->dec &&
            EVP_EncryptInit_ex2(impl->enc, impl->cipher, key.data(), nullptr, nullptr) == 1 &&
            EVP_DecryptInit_ex2(impl->dec, impl->cipher, key.data(), nullptr, nullptr) == 1;
  if (!ok) return fail(Errc::kCrypto, "cannot initialise AES-256-GCM");
  return Aes256Gcm(std::move(impl));
}

static bool process(EVP_CIPHER_CTX* ctx, bool encrypt, ByteView aad, ByteView in, uint8_t* out) {
  int n = 0;
  auto update = encrypt ? EVP_EncryptUpdate : EVP_DecryptUpdate;
  if (!aad.empty() && update(ctx, nullptr, &n, aad.data(), static_cast<int>(aad.size())) != 1)
    return false;
  // EVP takes int lengths: feed large buffers in pieces.
  size_t done = 0;
  while (done < in.size()) {
    size_t piece = std::min<size_t>(in.size() - done, 1u << 30);
    if (update(ctx, out + done, &n, in.data() + done, static_cast<int>(piece)) != 1) return false;
    done += piece;
  }
  return true;
}

Status Aes256Gcm::seal(ByteView nonce, ByteView aad, ByteView plaintext, uint8_t* out,
                       uint8_t* tag) {
  EVP_CIPHER_CTX* ctx = impl_->enc;
  int n = 0;
  bool ok = nonce.size() == kNonceSize &&
            EVP_EncryptInit_ex2(ctx, nullptr, nullptr, nonce.data(), nullptr) == 1 &&
            process(ctx, true, aad, plaintext, out) &&
            EVP_EncryptFinal_ex(ctx, out + plaintext.size(), &n) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTagSize, tag) == 1;
  if (!ok) return fail(Errc::kCrypto, "AES-256-GCM encryption failed");
  return {};
}

Result<bool> Aes256Gcm::open(ByteView nonce, ByteView aad, ByteView ciphertext, ByteView tag,
                             uint8_t* out) {
  EVP_CIPHER_CTX* ctx = impl_->dec;
  if (nonce.size() != kNonceSize || tag.size() != kTagSize)
    return fail(Errc::kInvalidArgument, "bad nonce or tag size");
  int n = 0;
  bool ok = EVP_DecryptInit_ex2(ctx, nullptr, nullptr, nonce.data(), nullptr) == 1 &&
            process(ctx, false, aad, ciphertext, out) &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kTagSize,
                                const_cast<uint8_t*>(tag.data())) == 1;
  if (!ok) return fail(Errc::kCrypto, "AES-256-GCM decryption failed");
  bool authentic = EVP_DecryptFinal_ex(ctx, out + ciphertext.size(), &n) == 1;
  ERR_clear_error();
  return authentic;
}

SecretBytes random_secret(size_t n) {
  SecretBytes s(n);
  if (RAND_priv_bytes(s.data(), static_cast<int>(n)) != 1) std::abort();  // no entropy: never go on
  return s;
}

Bytes random_bytes(size_t n) {
  Bytes b(n);
  if (RAND_bytes(b.data(), static_cast<int>(n)) != 1) std::abort();
  return b;
}

Result<SecretBytes> hkdf_sha256(ByteView ikm, ByteView salt, ByteView info, size_t length) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm.data()),
                                        ikm.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()),
                                        salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()),
                                        info.size()),
      OSSL_PARAM_construct_end()};
  SecretBytes out(length);
  bool ok = ctx && EVP_KDF_derive(ctx, out.data(), length, params) == 1;
  EVP_KDF_CTX_free(ctx);
  EVP_KDF_free(kdf);
  if (!ok) return fail(Errc::kCrypto, "HKDF failed");
  return out;
}

Result<Bytes> hmac_sha256(ByteView key, ByteView message) {
  Bytes out(32);
  size_t n = 0;
  if (!EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                 message.data(), message.size(), out.data(), out.size(), &n) ||
      n != 32)
    return fail(Errc::kCrypto, "HMAC failed");
  return out;
}

namespace {

constexpr std::string_view kWrapInfo = "mlfx-v1 data key wrap";

Bytes concat(std::initializer_list<ByteView> parts) {
  Bytes out;
  for (auto p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// KEK = HKDF-SHA256(ikm = X25519(e, R), salt = e_pub || R_pub, info = label || context)
Result<SecretBytes> wrap_kek(ByteView shared, ByteView eph_pub, ByteView rcpt_pub,
                             ByteView context) {
  Bytes salt = concat({eph_pub, rcpt_pub});
  Bytes info = concat({as_bytes(kWrapInfo), context});
  return hkdf_sha256(shared, salt, info, kDataKeySize);
}

}  // namespace

Result<WrappedKey> wrap_data_key(const BoxPublicKey& recipient, ByteView data_key,
                                 ByteView context) {
  MLFX_ASSIGN(BoxSecretKey eph, BoxSecretKey::generate());
  MLFX_ASSIGN(SecretBytes shared, eph.agree(recipient));
  MLFX_ASSIGN(SecretBytes kek,
              wrap_kek(shared.view(), eph.public_key().raw(), recipient.raw(), context));
  MLFX_ASSIGN(Aes256Gcm gcm, Aes256Gcm::create(kek.view()));
  WrappedKey w;
  w.recipient_fingerprint = recipient.fingerprint();
  w.ephemeral_public = eph.public_key().raw();
  w.nonce = random_bytes(kNonceSize);
  w.ciphertext.resize(data_key.size() + kTagSize);
  MLFX_TRY(gcm.seal(w.nonce, context, data_key, w.ciphertext.data(),
                    w.ciphertext.data() + data_key.size()));
  return w;
}

Result<SecretBytes> unwrap_data_key(const BoxSecretKey& me, const WrappedKey& w,
                                    ByteView context) {
  if (w.ciphertext.size() != kDataKeySize + kTagSize || w.nonce.size() != kNonceSize)
    return fail(Errc::kBadFormat, "wrapped key has the wrong size");
  MLFX_ASSIGN(BoxPublicKey eph, BoxPublicKey::from_raw(w.ephemeral_public));
  auto shared = me.agree(eph);
  if (!shared) return fail(Errc::kCorrupt, "wrapped key has an invalid ephemeral key");
  MLFX_ASSIGN(SecretBytes kek, wrap_kek(shared->view(), eph.raw(), me.public_key().raw(), context));
  MLFX_ASSIGN(Aes256Gcm gcm, Aes256Gcm::create(kek.view()));
  SecretBytes key(kDataKeySize);
  MLFX_ASSIGN(bool ok, gcm.open(w.nonce, context, ByteView(w.ciphertext).first(kDataKeySize),
                                ByteView(w.ciphertext).subspan(kDataKeySize), key.data()));
  if (!ok) return fail(Errc::kCorrupt, "wrapped data key does not authenticate for this lab key");
  return key;
}

}  // namespace mlfx::crypto
