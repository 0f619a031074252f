#include <sys/stat.h>

#include <gtest/gtest.h>

#include "mlfx/crypto/aead.h"
#include "mlfx/crypto/hash.h"
#include "mlfx/crypto/keys.h"
#include "test_util.h"

namespace mlfx::crypto {
namespace {

TEST(Hash, KnownVectors) {
  EXPECT_EQ(sha256_hex(as_bytes("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto md5 = Hasher::create(HashAlg::kMd5);
  auto sha1 = Hasher::create(HashAlg::kSha1);
  ASSERT_TRUE(md5 && sha1);
  md5->update(as_bytes("a"));
  md5->update(as_bytes("bc"));
  sha1->update(as_bytes("abc"));
  EXPECT_EQ(to_hex(*md5->finish()), "900150983cd24fb0d6963f7d28e17f72");
  EXPECT_EQ(to_hex(*sha1->finish()), "a9993e364706816aba3e25717850c26c9cd0d89d");
  // finish() resets for reuse
  md5->update(as_bytes("abc"));
  EXPECT_EQ(to_hex(*md5->finish()), "900150983cd24fb0d6963f7d28e17f72");
}

TEST(Kdf, HkdfRfc5869Case1) {
  Bytes ikm(22, 0x0b);
  Bytes salt = *from_hex("000102030405060708090a0b0c");
  Bytes info = *from_hex("f0f1f2f3f4f5f6f7f8f9");
  auto okm = hkdf_sha256(ikm, salt, info, 42);
  ASSERT_TRUE(okm);
  EXPECT_EQ(to_hex(okm->view()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

TEST(Kdf, HmacRfc4231Case2) {
  auto mac = hmac_sha256(as_bytes("Jefe"), as_bytes("what do ya want for nothing?"));
  ASSERT_TRUE(mac);
  EXPECT_EQ(to_hex(*mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(Aead, SealOpenAndTamper) {
  SecretBytes key = random_secret(kDataKeySize);
  auto gcm = Aes256Gcm::create(key.view());
  ASSERT_TRUE(gcm);
  Bytes nonce(kNonceSize, 1), aad = {1, 2, 3};
  std::string msg = "the quick brown fox";
  Bytes ct(msg.size()), tag(kTagSize), back(msg.size());
  ASSERT_TRUE(gcm->seal(nonce, aad, as_bytes(msg), ct.data(), tag.data()));
  EXPECT_NE(std::string(ct.begin(), ct.end()), msg);
  EXPECT_TRUE(*gcm->open(nonce, aad, ct, tag, back.data()));
  EXPECT_EQ(std::string(back.begin(), back.end()), msg);
  Bytes bad_ct = ct;
  bad_ct[3] ^= 0x10;
  EXPECT_FALSE(*gcm->open(nonce, aad, bad_ct, tag, back.data()));
  Bytes bad_aad = {1, 2, 4};
  EXPECT_FALSE(*gcm->open(nonce, bad_aad, ct, tag, back.data()));
  Bytes bad_nonce(kNonceSize, 2);
  EXPECT_FALSE(*gcm->open(bad_nonce, aad, ct, tag, back.data()));
  // Empty plaintext still authenticates.
  ASSERT_TRUE(gcm->seal(nonce, aad, {}, nullptr, tag.data()));
  EXPECT_TRUE(*gcm->open(nonce, aad, {}, tag, nullptr));
}

TEST(Signatures, SignVerifyAndReject) {
  auto k = SigningKey::generate();
  ASSERT_TRUE(k);
  auto sig = k->sign(as_bytes("manifest"));
  ASSERT_TRUE(sig);
  EXPECT_TRUE(k->public_key().verify(as_bytes("manifest"), *sig));
  EXPECT_FALSE(k->public_key().verify(as_bytes("manifesT"), *sig));
  Bytes bad = *sig;
  bad[10] ^= 1;
  EXPECT_FALSE(k->public_key().verify(as_bytes("manifest"), bad));
  EXPECT_FALSE(k->public_key().verify(as_bytes("manifest"), Bytes(10)));
  auto other = SigningKey::generate();
  EXPECT_FALSE(other->public_key().verify(as_bytes("manifest"), *sig));
  auto round = VerifyKey::from_raw(k->public_key().raw());
  ASSERT_TRUE(round);
  EXPECT_EQ(round->fingerprint(), k->public_key().fingerprint());
  EXPECT_FALSE(VerifyKey::from_raw(Bytes(31)));
}

TEST(KeyWrap, RoundTripAndBinding) {
  auto lab = BoxSecretKey::generate();
  auto other = BoxSecretKey::generate();
  ASSERT_TRUE(lab && other);
  SecretBytes dk = random_secret(kDataKeySize);
  Bytes ctx = {9, 9, 9};
  auto w = wrap_data_key(lab->public_key(), dk.view(), ctx);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->recipient_fingerprint, lab->public_key().fingerprint());
  auto back = unwrap_data_key(*lab, *w, ctx);
  ASSERT_TRUE(back);
  EXPECT_TRUE(equal_ct(back->view(), dk.view()));
  // Another lab key, another context, or a flipped bit all fail as integrity errors.
  EXPECT_EQ(unwrap_data_key(*other, *w, ctx).error().code(), Errc::kCorrupt);
  EXPECT_EQ(unwrap_data_key(*lab, *w, Bytes{9, 9, 8}).error().code(), Errc::kCorrupt);
  WrappedKey bad = *w;
  bad.ciphertext[0] ^= 1;
  EXPECT_EQ(unwrap_data_key(*lab, bad, ctx).error().code(), Errc::kCorrupt);
  // A low-order (all-zero) ephemeral key is refused.
  bad = *w;
  bad.ephemeral_public.assign(32, 0);
  EXPECT_FALSE(unwrap_data_key(*lab, bad, ctx));
}

TEST(KeyFiles, GenerateDeviceAndLab) {
  testing::TempDir dir;
  ASSERT_TRUE(generate_key_files(KeyKind::kDevice, dir / "dev"));
  ASSERT_TRUE(generate_key_files(KeyKind::kLab, dir / "lab"));
  struct stat st;
  ASSERT_EQ(stat((dir / "dev.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat((dir / "lab.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto dev = load_secret_key_file(dir / "dev.key");
  ASSERT_TRUE(dev) << dev.error().to_string();
  EXPECT_EQ(dev->kind, KeyKind::kDevice);
  EXPECT_TRUE(dev->signing && !dev->box);
  auto lab = load_secret_key_file(dir / "lab.key");
  ASSERT_TRUE(lab);
  EXPECT_EQ(lab->kind, KeyKind::kLab);
  EXPECT_TRUE(lab->signing && lab->box);

  auto dev_pub = load_public_key_file(dir / "dev.pub");
  auto lab_pub = load_public_key_file(dir / "lab.pub");
  ASSERT_TRUE(dev_pub && lab_pub);
  EXPECT_EQ(dev_pub->verify->fingerprint(), dev->signing->public_key().fingerprint());
  EXPECT_EQ(lab_pub->box->fingerprint(), lab->box->public_key().fingerprint());
  EXPECT_EQ(lab_pub->kind, KeyKind::kLab);

  // The private file holds no public-only PEM and the public file no private key.
  EXPECT_EQ(testing::read_file(dir / "dev.pub").find("PRIVATE"), std::string::npos);
  EXPECT_NE(testing::read_file(dir / "dev.key").find("BEGIN PRIVATE KEY"), std::string::npos);
}

TEST(KeyFiles, FingerprintMatchesStockOpenssl) {
  testing::TempDir dir;
  ASSERT_TRUE(generate_key_files(KeyKind::kDevice, dir / "dev"));
  auto pub = load_public_key_file(dir / "dev.pub");
  ASSERT_TRUE(pub);
  auto r = testing::run("openssl pkey -pubin -in " + dir / "dev.pub" + " -outform DER | sha256sum");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ("sha256:" + r.output.substr(0, 64), pub->verify->fingerprint());
  // Stock OpenSSL reads the private key too.
  EXPECT_EQ(testing::run("openssl pkey -in " + dir / "dev.key" + " -noout").exit_code, 0);
}

TEST(KeyFiles, RefusesOverwriteAndLooseModes) {
  testing::TempDir dir;
  ASSERT_TRUE(generate_key_files(KeyKind::kDevice, dir / "dev"));
  std::string before = testing::read_file(dir / "dev.key");
  auto again = generate_key_files(KeyKind::kLab, dir / "dev");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), Errc::kExists);
  EXPECT_EQ(testing::read_file(dir / "dev.key"), before);
  // An existing .pub alone also blocks generation, and no .key is left behind.
  testing::write_file(dir / "x.pub", "x");
  EXPECT_FALSE(generate_key_files(KeyKind::kDevice, dir / "x"));
  EXPECT_FALSE(testing::fs::exists(dir / "x.key"));

  chmod((dir / "dev.key").c_str(), 0644);
  auto loose = load_secret_key_file(dir / "dev.key");
  ASSERT_FALSE(loose);
  EXPECT_EQ(loose.error().code(), Errc::kPermission);
  EXPECT_NE(loose.error().message().find("chmod 600"), std::string::npos);
}

TEST(KeyFiles, EncryptedKeysGetAClearMessageAndNoPrompt) {
  testing::TempDir dir;
  ASSERT_EQ(testing::run("openssl genpkey -algorithm ED25519 -aes256 -pass pass:secret -out " + dir / "enc.key" +
                         " < /dev/null").exit_code, 0);
  auto k = parse_secret_key_pem(testing::read_file(dir / "enc.key"), "enc.key");
  ASSERT_FALSE(k);
  EXPECT_EQ(k.error().code(), Errc::kUnsupported);
  EXPECT_NE(k.error().message().find("encrypted private key"), std::string::npos);
}

TEST(KeyFiles, RejectsGarbageAndWrongKinds) {
  EXPECT_FALSE(parse_secret_key_pem("", "x"));
  EXPECT_FALSE(parse_secret_key_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "x"));
  EXPECT_FALSE(parse_public_key_pem("garbage", "x"));
  // An RSA key is not an mlfx key.
  testing::TempDir dir;
  ASSERT_EQ(testing::run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " + dir / "rsa.key").exit_code, 0);
  auto rsa = parse_secret_key_pem(testing::read_file(dir / "rsa.key"), "rsa.key");
  ASSERT_FALSE(rsa);
  EXPECT_EQ(rsa.error().code(), Errc::kBadFormat);
}

}  // namespace
}  // namespace mlfx::crypto
