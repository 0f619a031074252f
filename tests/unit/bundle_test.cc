#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

#include "bundle_fixture.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx::bundle {
namespace {

using testing::NamedData;

TEST(Format, HeadersRoundTrip) {
  FileHeader h;
  h.chunk_size = 65536;
  for (size_t i = 0; i < h.bundle_id.size(); ++i) h.bundle_id[i] = uint8_t(i);
  auto enc = encode_file_header(h);
  auto dec = decode_file_header(enc);
  ASSERT_TRUE(dec);
  EXPECT_EQ(dec->bundle_id, h.bundle_id);
  EXPECT_EQ(dec->chunk_size, 65536u);
  enc[20] ^= 1;
  EXPECT_EQ(decode_file_header(enc).error().code(), Errc::kCorrupt);

  RecordHeader r{uint32_t(RecordType::kChunk), kChunkFinal, 1234, 7, 99};
  auto renc = encode_record_header(r);
  auto rdec = decode_record_header(renc, 0);
  ASSERT_TRUE(rdec);
  EXPECT_EQ(rdec->payload_size, 1234u);
  EXPECT_EQ(rdec->stream, 7u);
  EXPECT_EQ(rdec->sequence, 99u);
  EXPECT_EQ(record_type_name(uint32_t(RecordType::kChunk)), "CHNK");
  EXPECT_EQ(record_type_name(uint32_t(RecordType::kEnd)), "END");
}

TEST(Format, StreamNames) {
  EXPECT_TRUE(is_valid_stream_name("cpu"));
  EXPECT_TRUE(is_valid_stream_name("core.1_x-y"));
  EXPECT_FALSE(is_valid_stream_name(""));
  EXPECT_FALSE(is_valid_stream_name(".hidden"));
  EXPECT_FALSE(is_valid_stream_name("a/b"));
  EXPECT_FALSE(is_valid_stream_name(".."));
  EXPECT_FALSE(is_valid_stream_name("SHA256SUMS"));
  EXPECT_FALSE(is_valid_stream_name("sha256sums"));  // case-insensitive file systems
  EXPECT_FALSE(is_valid_stream_name("manifest.json"));
  EXPECT_FALSE(is_valid_stream_name(std::string(65, 'a')));
}

class BundleRoundTrip : public ::testing::Test {
 protected:
  testing::TempDir dir;
  testing::TestKeys keys = testing::make_keys();
};

TEST_F(BundleRoundTrip, ManySizesExactly) {
  const uint32_t cs = kMinChunkSize;
  NamedData streams = {{"empty", ""},
                       {"one", "x"},
                       {"exact", testing::random_string(cs, 1)},
                       {"exact3", testing::random_string(3 * cs, 2)},
                       {"ragged", testing::random_string(3 * cs + 17, 3)},
                       {"minus1", testing::random_string(2 * cs - 1, 4)}};
  auto m = testing::seal_strings(dir / "b.mlfx", keys, streams, cs, true);
  ASSERT_TRUE(m) << m.error().to_string();
  auto r = BundleReader::open(dir / "b.mlfx");
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_EQ(r->manifest().streams.size(), streams.size());
  const uint64_t expected_chunks[] = {1, 1, 1, 3, 4, 2};
  for (size_t i = 0; i < streams.size(); ++i) {
    const auto& s = r->manifest().streams[i];
    EXPECT_EQ(s.name, streams[i].first);
    EXPECT_EQ(s.size, streams[i].second.size());
    EXPECT_EQ(s.chunks, expected_chunks[i]) << s.name;
    EXPECT_EQ(s.sha256, crypto::sha256_hex(as_bytes(streams[i].second)));
    ASSERT_TRUE(s.md5 && s.sha1);
  }
  EXPECT_TRUE(r->verify_signature());
  EXPECT_TRUE(r->verify_chunks(nullptr));
  auto chain = r->verify_custody();
  ASSERT_TRUE(chain) << chain.error().to_string();
  EXPECT_EQ(chain->types, (std::vector<std::string>{"acquired", "sealed"}));
  auto data = testing::decrypt_all(*r, *keys.lab.box);
  ASSERT_TRUE(data) << data.error().to_string();
  for (size_t i = 0; i < streams.size(); ++i) EXPECT_EQ((*data)[i], streams[i].second);
}

TEST_F(BundleRoundTrip, NoPlaintextInTheBundle) {
  std::string secret = "SECRET-MODEL-WEIGHTS-" + std::string(5000, 'w');
  ASSERT_TRUE(testing::seal_strings(dir / "b.mlfx", keys, {{"cpu", secret}}));
  std::string raw = testing::read_file(dir / "b.mlfx");
  EXPECT_EQ(raw.find("SECRET-MODEL"), std::string::npos);
  EXPECT_EQ(raw.find(std::string(64, 'w')), std::string::npos);
}

TEST_F(BundleRoundTrip, WriteFromFileEqualsWrite) {
  std::string data = testing::random_string(5 * kMinChunkSize + 123, 5);
  testing::write_file(dir / "in", data);
  auto out = File::create_new(dir / "b.mlfx", 0600);
  ASSERT_TRUE(out);
  SealParams p;
  p.chunk_size = kMinChunkSize;
  auto w = BundleWriter::create(std::move(*out), *keys.device.signing, {keys.lab.box->public_key()}, p);
  ASSERT_TRUE(w);
  auto in = File::open_read(dir / "in");
  ASSERT_TRUE(w->begin_stream("f", dir / "in"));
  ASSERT_TRUE(w->write_from(*in, nullptr));
  ASSERT_TRUE(w->end_stream());
  ASSERT_TRUE(w->finish());
  auto r = BundleReader::open(dir / "b.mlfx");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->manifest().streams[0].chunks, 6u);
  auto got = testing::decrypt_all(*r, *keys.lab.box);
  ASSERT_TRUE(got);
  EXPECT_EQ((*got)[0], data);
}

// The pipeline (hasher, sealers, writer threads) with the fewest buffers and with many
// sealers must give the same bytes whatever the write pattern: zero-copy buffer()/commit()
// in ragged pieces, commit(0), a stream that ends exactly on a chunk boundary.
TEST_F(BundleRoundTrip, PipelineKeepsOrderUnderAnyBudgetAndWritePattern) {
  const uint32_t cs = kMinChunkSize;
  const std::string a = testing::random_string(37 * cs + 5, 6), b = testing::random_string(8 * cs, 7);
  for (unsigned sealers : {1u, 3u}) {
    for (uint64_t budget : {uint64_t{0}, uint64_t{64} * cs}) {
      const std::string path = dir / ("p" + std::to_string(sealers) + "-" + std::to_string(budget));
      SealParams p;
      p.chunk_size = cs;
      p.buffer_bytes = budget;
      p.sealer_threads = sealers;
      p.legacy_hashes = true;
      auto w = BundleWriter::create(*File::create_new(path, 0600), *keys.device.signing,
                                    {keys.lab.box->public_key()}, p);
      ASSERT_TRUE(w);
      ASSERT_TRUE(w->prepare_buffers(10 * cs));
      ASSERT_TRUE(w->begin_stream("a", "m"));
      size_t at = 0, step = 1;
      while (at < a.size()) {
        auto room = w->buffer(std::min(step, a.size() - at));
        ASSERT_TRUE(room) << room.error().to_string();
        ASSERT_TRUE(w->commit(0));
        std::memcpy(room->data(), a.data() + at, room->size());
        ASSERT_TRUE(w->commit(room->size()));
        at += room->size();
        step = step * 7 % 9001 + 1;
      }
      ASSERT_TRUE(w->end_stream());
      ASSERT_TRUE(w->begin_stream("b", "m"));
      ASSERT_TRUE(w->write(as_bytes(b)));
      ASSERT_TRUE(w->buffer(1));  // asked for room, then ended without using it
      ASSERT_TRUE(w->end_stream());
      ASSERT_TRUE(w->begin_stream("empty", "m"));
      ASSERT_TRUE(w->end_stream());
      ASSERT_TRUE(w->finish());
      auto r = BundleReader::open(path);
      ASSERT_TRUE(r) << r.error().to_string();
      EXPECT_TRUE(r->verify_chunks(nullptr));
      EXPECT_EQ(r->manifest().streams[0].chunks, 38u);
      EXPECT_EQ(r->manifest().streams[1].chunks, 8u);
      EXPECT_EQ(r->manifest().streams[0].sha256, crypto::sha256_hex(as_bytes(a)));
      auto got = testing::decrypt_all(*r, *keys.lab.box);
      ASSERT_TRUE(got) << got.error().to_string();
      EXPECT_EQ((*got)[0], a);
      EXPECT_EQ((*got)[1], b);
      EXPECT_EQ((*got)[2], "");
    }
  }
}

// A write that fails in the writer thread (file size limit: EFBIG) reaches the caller, and
// nothing hangs.
TEST_F(BundleRoundTrip, PipelineFailureReachesTheCaller) {
  struct rlimit before;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &before), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = before;
  limited.rlim_cur = 16 * kMinChunkSize;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);
  Status st;
  {
    SealParams p;
    p.chunk_size = kMinChunkSize;
    auto w = BundleWriter::create(*File::create_new(dir / "b.mlfx", 0600), *keys.device.signing,
                                  {keys.lab.box->public_key()}, p);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->begin_stream("s", "m"));
    const std::string data = testing::random_string(100 * kMinChunkSize, 8);
    st = w->write(as_bytes(data));
    if (st) st = w->end_stream();
  }
  setrlimit(RLIMIT_FSIZE, &before);
  signal(SIGXFSZ, old_handler);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("b.mlfx"), std::string::npos) << st.error().to_string();
}

// The cancel flag stops sealing at the next chunk, also for chunks already buffered.
TEST_F(BundleRoundTrip, CancelStopsSealingWithAClearError) {
  std::atomic<bool> cancel{false};
  SealParams p;
  p.chunk_size = kMinChunkSize;
  p.cancel = &cancel;
  auto w = BundleWriter::create(*File::create_new(dir / "b.mlfx", 0600), *keys.device.signing,
                                {keys.lab.box->public_key()}, p);
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->begin_stream("s", "m"));
  ASSERT_TRUE(w->write(as_bytes(testing::random_string(2 * kMinChunkSize, 9))));
  cancel = true;
  Status st = w->write(as_bytes(testing::random_string(10 * kMinChunkSize, 10)));
  if (st) st = w->end_stream();
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("interrupted"), std::string::npos) << st.error().to_string();
}

TEST_F(BundleRoundTrip, SeveralRecipientsEachOpen) {
  auto lab2 = crypto::BoxSecretKey::generate();
  auto stranger = crypto::BoxSecretKey::generate();
  auto out = File::create_new(dir / "b.mlfx", 0600);
  auto w = BundleWriter::create(std::move(*out), *keys.device.signing,
                                {keys.lab.box->public_key(), lab2->public_key()}, {});
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->begin_stream("s", "m"));
  ASSERT_TRUE(w->write(as_bytes("payload")));
  ASSERT_TRUE(w->end_stream());
  ASSERT_TRUE(w->finish());
  auto r = BundleReader::open(dir / "b.mlfx");
  ASSERT_TRUE(r);
  EXPECT_EQ((*testing::decrypt_all(*r, *keys.lab.box))[0], "payload");
  EXPECT_EQ((*testing::decrypt_all(*r, *lab2))[0], "payload");
  auto no = r->unwrap_data_key(*stranger);
  ASSERT_FALSE(no);
  EXPECT_NE(no.error().message().find("not encrypted to lab key"), std::string::npos);
}

TEST_F(BundleRoundTrip, WriterRejectsMisuse) {
  auto out = File::create_new(dir / "b.mlfx", 0600);
  auto none = BundleWriter::create(std::move(*out), *keys.device.signing, {}, {});
  EXPECT_FALSE(none);
  auto out1 = File::create_new(dir / "d.mlfx", 0600);
  auto twice = BundleWriter::create(std::move(*out1), *keys.device.signing,
                                    {keys.lab.box->public_key(), keys.lab.box->public_key()}, {});
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message().find("given twice"), std::string::npos);
  auto out2 = File::create_new(dir / "c.mlfx", 0600);
  auto w = BundleWriter::create(std::move(*out2), *keys.device.signing, {keys.lab.box->public_key()}, {});
  ASSERT_TRUE(w);
  EXPECT_FALSE(w->write(as_bytes("x")));            // no stream
  EXPECT_FALSE(w->begin_stream("../etc", "x"));     // bad name
  EXPECT_FALSE(w->begin_stream("SHA256SUMS", "x"));  // reserved
  ASSERT_TRUE(w->begin_stream("a", "x"));
  EXPECT_FALSE(w->begin_stream("b", "x"));  // nested
  EXPECT_FALSE(w->finish());                // stream open
  ASSERT_TRUE(w->end_stream());
  EXPECT_FALSE(w->begin_stream("a", "x"));  // duplicate
}

TEST_F(BundleRoundTrip, ManifestRecordsWhatHappened) {
  auto m = testing::seal_strings(dir / "b.mlfx", keys, {{"cpu", "abc"}});
  ASSERT_TRUE(m);
  auto r = BundleReader::open(dir / "b.mlfx");
  ASSERT_TRUE(r);
  const Manifest& rm = r->manifest();
  EXPECT_EQ(rm.case_id, "case-1");
  EXPECT_EQ(rm.device.key_fingerprint, keys.device.signing->public_key().fingerprint());
  EXPECT_EQ(rm.recipients.at(0).recipient_fingerprint, keys.lab.box->public_key().fingerprint());
  EXPECT_EQ(rm.created_utc.back(), 'Z');
  EXPECT_EQ(rm.tool.name, "mlfx");
  EXPECT_FALSE(rm.device.hostname.empty());
  // The stored manifest is canonical: parsing and serialising gives the same bytes.
  EXPECT_EQ(rm.serialize(), r->manifest_bytes());
}

}  // namespace
}  // namespace mlfx::bundle
