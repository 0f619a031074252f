#include "mlfx/crypto/keys.h"

#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "mlfx/base/file.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::crypto {

namespace {

PkeyPtr wrap_pkey(EVP_PKEY* p) { return PkeyPtr(p, EVP_PKEY_free); }

Result<Bytes> raw_public(EVP_PKEY* p) {
  Bytes raw(kRawKeySize);
  size_t n = raw.size();
  if (EVP_PKEY_get_raw_public_key(p, raw.data(), &n) != 1 || n != kRawKeySize)
    return fail(Errc::kCrypto, "cannot extract public key: " + openssl_error());
  return raw;
}

Result<std::string> spki_fingerprint(EVP_PKEY* p) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(p, &der);
  if (n <= 0) return fail(Errc::kCrypto, "cannot encode public key: " + openssl_error());
  std::string fp = "sha256:" + sha256_hex({der, static_cast<size_t>(n)});
  OPENSSL_free(der);
  return fp;
}

std::string public_pem(EVP_PKEY* p) {
  BIO* bio = BIO_new(BIO_s_mem());
  std::string out;
  if (bio && PEM_write_bio_PUBKEY(bio, p) == 1) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    out.assign(data, static_cast<size_t>(n));
  }
  BIO_free(bio);
  return out;
}

Result<PkeyPtr> generate_pkey(const char* type) {
  EVP_PKEY* p = EVP_PKEY_Q_keygen(nullptr, nullptr, type);
  if (!p) return fail(Errc::kCrypto, std::string("cannot generate ") + type + " key: " + openssl_error());
  return wrap_pkey(p);
}

Result<PkeyPtr> pkey_from_raw_public(int type, ByteView raw, const char* what) {
  if (raw.size() != kRawKeySize)
    return fail(Errc::kBadFormat, std::string(what) + " public key must be 32 bytes, got " +
                                      std::to_string(raw.size()));
  EVP_PKEY* p = EVP_PKEY_new_raw_public_key(type, nullptr, raw.data(), raw.size());
  if (!p) return fail(Errc::kBadFormat, std::string("invalid ") + what + " public key");
  return wrap_pkey(p);
}

}  // namespace

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (!e) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

const char* key_kind_name(KeyKind k) { return k == KeyKind::kDevice ? "device" : "lab"; }

// ---- VerifyKey / SigningKey (Ed25519) ----

Result<VerifyKey> VerifyKey::from_pkey(PkeyPtr pkey) {
  VerifyKey k;
  MLFX_ASSIGN(k.raw_, raw_public(pkey.get()));
  MLFX_ASSIGN(k.fingerprint_, spki_fingerprint(pkey.get()));
  k.pkey_ = std::move(pkey);
  return k;
}

Result<VerifyKey> VerifyKey::from_raw(ByteView raw) {
  MLFX_ASSIGN(PkeyPtr p, pkey_from_raw_public(EVP_PKEY_ED25519, raw, "Ed25519"));
  return from_pkey(std::move(p));
}

bool VerifyKey::verify(ByteView message, ByteView signature) const {
  if (signature.size() != kSignatureSize || !pkey_) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, pkey_.get()) == 1 &&
            EVP_DigestVerify(ctx, signature.data(), signature.size(), message.data(),
                             message.size()) == 1;
  EVP_MD_CTX_free(ctx);
  ERR_clear_error();
  return ok;
}

std::string VerifyKey::pem() const { return public_pem(pkey_.get()); }

Result<SigningKey> SigningKey::generate() {
  SigningKey k;
  MLFX_ASSIGN(k.pkey_, generate_pkey("ED25519"));
  MLFX_ASSIGN(k.public_, VerifyKey::from_pkey(k.pkey_));
  return k;
}

Result<Bytes> SigningKey::sign(ByteView message) const {
  Bytes sig(kSignatureSize);
  size_t n = sig.size();
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, pkey_.get()) == 1 &&
            EVP_DigestSign(ctx, sig.data(), &n, message.data(), message.size()) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok || n != kSignatureSize) return fail(Errc::kCrypto, "signing failed: " + openssl_error());
  return sig;
}

// ---- BoxPublicKey / BoxSecretKey (X25519) ----

Result<BoxPublicKey> BoxPublicKey::from_pkey(PkeyPtr pkey) {
  BoxPublicKey k;
  MLFX_ASSIGN(k.raw_, raw_public(pkey.get()));
  MLFX_ASSIGN(k.fingerprint_, spki_fingerprint(pkey.get()));
  k.pkey_ = std::move(pkey);
  return k;
}

Result<BoxPublicKey> BoxPublicKey::from_raw(ByteView raw) {
  MLFX_ASSIGN(PkeyPtr p, pkey_from_raw_public(EVP_PKEY_X25519, raw, "X25519"));
  return from_pkey(std::move(p));
}

std::string BoxPublicKey::pem() const { return public_pem(pkey_.get()); }

Result<BoxSecretKey> BoxSecretKey::generate() {
  BoxSecretKey k;
  MLFX_ASSIGN(k.pkey_, generate_pkey("X25519"));
  MLFX_ASSIGN(k.public_, BoxPublicKey::from_pkey(k.pkey_));
  return k;
}

Result<SecretBytes> BoxSecretKey::agree(const BoxPublicKey& peer) const {
  SecretBytes shared(kRawKeySize);
  size_t n = shared.size();
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, pkey_.get(), nullptr);
  // OpenSSL rejects an all-zero result, which is what low-order points produce.
  bool ok = ctx && EVP_PKEY_derive_init(ctx) == 1 &&
            EVP_PKEY_derive_set_peer(ctx, peer.pkey()) == 1 &&
            EVP_PKEY_derive(ctx, shared.data(), &n) == 1 && n == kRawKeySize;
  EVP_PKEY_CTX_free(ctx);
  if (!ok) return fail(Errc::kCrypto, "X25519 key agreement failed: " + openssl_error());
  return shared;
}

// ---- files ----


namespace {
// Never prompt for a pass phrase: mlfx keys are stored unencrypted with mode 0600.
int no_pass_phrase(char*, int, int, void*) { return -1; }
}  // namespace

Result<SecretKeyFile> parse_secret_key_pem(std::string_view pem, const std::string& origin) {
  if (pem.find("ENCRYPTED") != std::string_view::npos)
    return fail(Errc::kUnsupported, origin + " is an encrypted private key; mlfx reads unencrypted PKCS#8 "
                                             "keys (protect them with mode 0600 or an HSM-backed store)");
  std::optional<SigningKey> signing;
  std::optional<BoxSecretKey> box;
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return fail(Errc::kCrypto, "out of memory");
  Status status;
  int count = 0;
  while (EVP_PKEY* raw = PEM_read_bio_PrivateKey(bio, nullptr, no_pass_phrase, nullptr)) {
    PkeyPtr p = wrap_pkey(raw);
    ++count;
    if (EVP_PKEY_get_id(raw) == EVP_PKEY_ED25519 && !signing) {
      SigningKey k;
      k.pkey_ = p;
      auto pub = VerifyKey::from_pkey(p);
      if (!pub) { status = fail(std::move(pub).error()); break; }
      k.public_ = std::move(*pub);
      signing = std::move(k);
    } else if (EVP_PKEY_get_id(raw) == EVP_PKEY_X25519 && !box) {
      BoxSecretKey k;
      k.pkey_ = p;
      auto pub = BoxPublicKey::from_pkey(p);
      if (!pub) { status = fail(std::move(pub).error()); break; }
      k.public_ = std::move(*pub);
      box = std::move(k);
    } else {
      status = fail(Errc::kBadFormat,
                    origin + ": unexpected key (only one Ed25519 and one X25519 key allowed)");
      break;
    }
  }
  ERR_clear_error();
  BIO_free(bio);
  if (!status) return fail(std::move(status).error());
  if (count == 0 || !signing)
    return fail(Errc::kBadFormat,
                origin + ": not an mlfx private key file (no Ed25519 PEM private key); "
                         "create one with 'mlfx keys gen'");
  SecretKeyFile out{box ? KeyKind::kLab : KeyKind::kDevice, std::move(signing), std::move(box)};
  return out;
}

Result<PublicKeyFile> parse_public_key_pem(std::string_view pem, const std::string& origin) {
  std::optional<VerifyKey> verify;
  std::optional<BoxPublicKey> box;
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return fail(Errc::kCrypto, "out of memory");
  Status status;
  int count = 0;
  while (EVP_PKEY* raw = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr)) {
    PkeyPtr p = wrap_pkey(raw);
    ++count;
    if (EVP_PKEY_get_id(raw) == EVP_PKEY_ED25519 && !verify) {
      auto k = VerifyKey::from_pkey(p);
      if (!k) { status = fail(std::move(k).error()); break; }
      verify = std::move(*k);
    } else if (EVP_PKEY_get_id(raw) == EVP_PKEY_X25519 && !box) {
      auto k = BoxPublicKey::from_pkey(p);
      if (!k) { status = fail(std::move(k).error()); break; }
      box = std::move(*k);
    } else {
      status = fail(Errc::kBadFormat,
                    origin + ": unexpected key (only one Ed25519 and one X25519 key allowed)");
      break;
    }
  }
  ERR_clear_error();
  BIO_free(bio);
  if (!status) return fail(std::move(status).error());
  if (count == 0 || !verify)
    return fail(Errc::kBadFormat, origin + ": not an mlfx public key file (no Ed25519 PEM "
                                           "public key); use the .pub from 'mlfx keys gen'");
  PublicKeyFile out{box ? KeyKind::kLab : KeyKind::kDevice, std::move(verify), std::move(box)};
  return out;
}

Result<SecretKeyFile> load_secret_key_file(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    return fail(Errc::kNotFound, "cannot open key " + path + ": " + errno_text(errno));
  if (st.st_mode & 077)
    return fail(Errc::kPermission,
                "private key " + path + " is readable by group or others; run: chmod 600 " + path);
  // The key's text goes to secure memory (SecretBytes), not to the ordinary heap.
  constexpr size_t kMaxKeyFile = 64 * 1024;
  MLFX_ASSIGN(File f, File::open_read(path));
  SecretBytes pem(kMaxKeyFile + 1);
  MLFX_ASSIGN(size_t n, f.read_full(pem.data(), pem.size()));
  if (n > kMaxKeyFile)
    return fail(Errc::kInvalidArgument, path + " is larger than the " + std::to_string(kMaxKeyFile) +
                                            " bytes of a key file");
  return parse_secret_key_pem(as_chars({pem.data(), n}), path);
}

Result<PublicKeyFile> load_public_key_file(const std::string& path) {
  MLFX_ASSIGN(std::string pem, read_small_file(path, 64 * 1024));
  return parse_public_key_pem(pem, path);
}

namespace {

// Serialises private keys as PKCS#8 PEM into OpenSSL secure memory, and writes them out.
Status write_private_pem(const std::string& path, const std::vector<EVP_PKEY*>& keys) {
  BIO* bio = BIO_new(BIO_s_secmem());
  if (!bio) return fail(Errc::kCrypto, "out of memory");
  for (EVP_PKEY* k : keys) {
    if (PEM_write_bio_PrivateKey(bio, k, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
      BIO_free(bio);
      return fail(Errc::kCrypto, "cannot encode private key: " + openssl_error());
    }
  }
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  Status st = write_new_file(path, std::string_view(data, static_cast<size_t>(n)), 0600);
  BIO_free(bio);  // secure-heap BIOs are cleansed on free
  return st;
}

}  // namespace

Status generate_key_files(KeyKind kind, const std::string& prefix) {
  const std::string key_path = prefix + ".key", pub_path = prefix + ".pub";
  for (const auto& p : {key_path, pub_path}) {
    if (access(p.c_str(), F_OK) == 0)
      return fail(Errc::kExists, p + " already exists; refusing to overwrite a key");
  }
  MLFX_ASSIGN(SigningKey signing, SigningKey::generate());
  std::vector<EVP_PKEY*> priv;
  std::string pub;
  std::optional<BoxSecretKey> box;
  if (kind == KeyKind::kLab) {
    MLFX_ASSIGN(box, BoxSecretKey::generate());
  }
  // Lab files list the X25519 key first: it is the lab's identity as a recipient.
  if (box) {
    priv.push_back(box->pkey_.get());
    pub += box->public_key().pem();
  }
  priv.push_back(signing.pkey_.get());
  pub += signing.public_key().pem();
  MLFX_TRY(write_private_pem(key_path, priv));
  if (auto st = write_new_file(pub_path, pub, 0644); !st) {
    unlink(key_path.c_str());
    return st;
  }
  return {};
}

}  // namespace mlfx::crypto
