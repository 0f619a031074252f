// Multi-GiB round trips through one bundle: 2.5 GiB of pseudo-random data fed in pieces
// (a stream of unknown length) and a 4.5 GiB sparse file (offsets beyond 4 GiB), sealed,
// verified and decrypted back, compared byte for byte / by independent SHA-256.
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>

#include "bundle_fixture.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx {
namespace {

constexpr uint64_t kGiB = 1ull << 30;

// xorshift64*: fast, deterministic, reproducible from any 8-byte-aligned position.
class Generator {
 public:
  explicit Generator(uint64_t seed) : state_(seed) {}
  void fill(uint8_t* p, size_t n) {  // n multiple of 8
    for (size_t i = 0; i < n; i += 8) {
      state_ ^= state_ >> 12;
      state_ ^= state_ << 25;
      state_ ^= state_ >> 27;
      uint64_t v = state_ * 0x2545F4914F6CDD1Dull;
      std::memcpy(p + i, &v, 8);
    }
  }

 private:
  uint64_t state_;
};

TEST(LargeRoundTrip, RandomAndSparseMultiGiB) {
  testing::TempDir dir;
  struct statvfs vfs;
  ASSERT_EQ(statvfs(dir.path().c_str(), &vfs), 0);
  const uint64_t free_bytes = uint64_t(vfs.f_bavail) * vfs.f_frsize;
  if (free_bytes < 10 * kGiB)
    GTEST_SKIP() << "needs 10 GiB free in " << dir.path() << ", only " << free_bytes / kGiB << " GiB";

  const uint64_t random_size = 5 * kGiB / 2 + 4096 + 8;  // not a multiple of the chunk size
  const uint64_t sparse_size = 9 * kGiB / 2 + 12345;
  // The sparse file: holes with a few islands of data, one of them past 4 GiB.
  {
    int fd = open((dir / "sparse.img").c_str(), O_CREAT | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(sparse_size)), 0);
    std::string island = testing::random_string(1 << 20, 99);
    for (uint64_t off : {uint64_t(0), kGiB + 3, 4 * kGiB + 12345, sparse_size - island.size()})
      ASSERT_EQ(pwrite(fd, island.data(), island.size(), static_cast<off_t>(off)), ssize_t(island.size()));
    close(fd);
  }
  std::string sparse_sha;
  {
    auto f = File::open_read(dir / "sparse.img");
    auto h = crypto::Hasher::create(crypto::HashAlg::kSha256);
    Bytes buf(8 << 20);
    while (size_t n = *f->read_full(buf.data(), buf.size())) h->update({buf.data(), n});
    sparse_sha = to_hex(*h->finish());
  }

  testing::TestKeys keys = testing::make_keys();
  std::string random_sha;
  {
    auto out = File::create_new(dir / "big.mlfx", 0600);
    ASSERT_TRUE(out);
    auto w = bundle::BundleWriter::create(std::move(*out), *keys.device.signing, {keys.lab.box->public_key()}, {});
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->begin_stream("random", "generator"));
    Generator gen(42);
    auto h = crypto::Hasher::create(crypto::HashAlg::kSha256);
    Bytes piece(1 << 20);
    for (uint64_t done = 0; done < random_size;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(piece.size(), random_size - done));
      gen.fill(piece.data(), (n + 7) & ~size_t(7));
      h->update({piece.data(), n});
      ASSERT_TRUE(w->write({piece.data(), n}));
      done += n;
    }
    random_sha = to_hex(*h->finish());
    ASSERT_TRUE(w->end_stream());
    auto in = File::open_read(dir / "sparse.img");
    ASSERT_TRUE(w->begin_stream("sparse", dir / "sparse.img"));
    ASSERT_TRUE(w->write_from(*in, nullptr));
    ASSERT_TRUE(w->end_stream());
    ASSERT_TRUE(w->finish());
  }

  auto r = bundle::BundleReader::open(dir / "big.mlfx");
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_GT(r->file_size(), random_size + sparse_size);
  const auto& m = r->manifest();
  EXPECT_EQ(m.streams[0].size, random_size);
  EXPECT_EQ(m.streams[0].sha256, random_sha);
  EXPECT_EQ(m.streams[1].size, sparse_size);
  EXPECT_EQ(m.streams[1].sha256, sparse_sha);
  EXPECT_TRUE(r->verify_signature());
  ASSERT_TRUE(r->verify_chunks(nullptr));
  ASSERT_TRUE(r->verify_custody());
  auto key = r->unwrap_data_key(*keys.lab.box);
  ASSERT_TRUE(key);

  // Stream 0 compared byte for byte against a regenerated sequence.
  Generator regen(42);
  Bytes expect;
  uint64_t seen = 0;
  bool equal = true;
  ASSERT_TRUE(r->decrypt_stream(0, key->view(), [&](ByteView b) -> Status {
    expect.resize((b.size() + 7) & ~size_t(7));
    regen.fill(expect.data(), expect.size());
    equal = equal && std::memcmp(expect.data(), b.data(), b.size()) == 0;
    seen += b.size();
    return {};
  }, nullptr));
  EXPECT_TRUE(equal);
  EXPECT_EQ(seen, random_size);
  // Stream 1 by an independent SHA-256 of what comes out.
  auto h = crypto::Hasher::create(crypto::HashAlg::kSha256);
  seen = 0;
  ASSERT_TRUE(r->decrypt_stream(1, key->view(), [&](ByteView b) -> Status {
    h->update(b);
    seen += b.size();
    return {};
  }, nullptr));
  EXPECT_EQ(seen, sparse_size);
  EXPECT_EQ(to_hex(*h->finish()), sparse_sha);
}

}  // namespace
}  // namespace mlfx
