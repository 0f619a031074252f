#include "mlfx/crypto/hash.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

namespace mlfx::crypto {

const char* hash_name(HashAlg alg) {
  switch (alg) {
    case HashAlg::kSha256: return "sha256";
    case HashAlg::kSha1: return "sha1";
    case HashAlg::kMd5: return "md5";
  }
  return "?";
}

size_t hash_size(HashAlg alg) {
  switch (alg) {
    case HashAlg::kSha256: return 32;
    case HashAlg::kSha1: return 20;
    case HashAlg::kMd5: return 16;
  }
  return 0;
}

struct Hasher::Impl {
  EVP_MD* md = nullptr;
  EVP_MD_CTX* ctx = nullptr;
  bool failed = false;
  ~Impl() {
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
  }
};

Hasher::Hasher(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;
Hasher::~Hasher() = default;

Result<Hasher> Hasher::create(HashAlg alg) {
  auto impl = std::make_unique<Impl>();
  const char* names[] = {"SHA256", "SHA1", "MD5"};
  impl->md = EVP_MD_fetch(nullptr, names[static_cast<int>(alg)], nullptr);
  impl->ctx = EVP_MD_CTX_new();
  if (!impl->md || !impl->ctx || EVP_DigestInit_ex2(impl->ctx, impl->md, nullptr) != 1)
    return fail(Errc::kCrypto, std::string("cannot initialise ") + hash_name(alg));
  return Hasher(std::move(impl));
}

void Hasher::update(ByteView data) {
  if (EVP_DigestUpdate(impl_->ctx, data.data(), data.size()) != 1) impl_->failed = true;
}

Result<Bytes> Hasher::finish() {
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int n = 0;
  bool ok = !impl_->failed && EVP_DigestFinal_ex(impl_->ctx, out.data(), &n) == 1 &&
            EVP_DigestInit_ex2(impl_->ctx, impl_->md, nullptr) == 1;
  if (!ok) return fail(Errc::kCrypto, "digest computation failed");
  out.resize(n);
  return out;
}

Bytes sha256(ByteView data) {
  Bytes out(SHA256_DIGEST_LENGTH);
  SHA256(data.data(), data.size(), out.data());
  return out;
}

}  // namespace mlfx::crypto
