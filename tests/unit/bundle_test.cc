#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

#include "../../protocol/src/bundle/chunk_pipeline.h"  // internal to the bundle library
#include "bundle_fixture.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx::bundle {
namespace {

using testing::NamedData;

Status ended_ok(Result<StreamInfo> ended) {
  if (!ended) return fail(std::move(ended).error());
  return {};
}

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
    if (st) st = ended_ok(w->end_stream());
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
  if (st) st = ended_ok(w->end_stream());
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

// The pool behind the writer and the reader: ordered tasks see chunks one at a time in
// submission order, parallel ones run at once, and freed slots are reused.
TEST(ChunkPipeline, OrderedTasksKeepOrderWhileParallelOnesOverlap) {
  constexpr size_t kSlots = 6, kChunks = 200;
  std::vector<size_t> value(kSlots);
  std::mutex mu;
  std::vector<size_t> first_lane, second_lane;
  std::atomic<int> in_parallel{0}, most_in_parallel{0}, in_first{0}, in_second{0};
  auto lane = [&](std::vector<size_t>& seen, std::atomic<int>& in_lane) {
    return detail::PipelineTask{true, [&](size_t k, unsigned) -> Status {
                                  EXPECT_EQ(in_lane.fetch_add(1), 0) << "an ordered task ran twice at once";
                                  {
                                    std::lock_guard lk(mu);
                                    seen.push_back(value[k]);
                                  }
                                  in_lane.fetch_sub(1);
                                  return {};
                                }};
  };
  auto parallel = detail::PipelineTask{false, [&](size_t k, unsigned worker) -> Status {
    EXPECT_LT(worker, 3u);
    const int now = in_parallel.fetch_add(1) + 1;
    int most = most_in_parallel.load();
    while (now > most && !most_in_parallel.compare_exchange_weak(most, now)) {}
    std::this_thread::sleep_for(std::chrono::microseconds(200 + (value[k] * 37) % 300));
    in_parallel.fetch_sub(1);
    return {};
  }};
  // Two ordered tasks in one step (they may run at once, each in its own order), a parallel
  // step, an ordered one.
  std::vector<size_t> third_lane;
  std::atomic<int> in_third{0};
  detail::ChunkPipeline p({{lane(first_lane, in_first), lane(second_lane, in_second)}, {parallel},
                           {lane(third_lane, in_third)}},
                          kSlots, 3);
  for (size_t k = 0; k < kSlots; ++k) p.add_free_slot(k);
  for (size_t i = 0; i < kChunks; ++i) {
    auto k = p.acquire();
    ASSERT_TRUE(k);
    value[*k] = i;
    ASSERT_TRUE(p.submit(*k));
  }
  ASSERT_TRUE(p.drain());
  std::vector<size_t> expected(kChunks);
  for (size_t i = 0; i < kChunks; ++i) expected[i] = i;
  EXPECT_EQ(first_lane, expected);
  EXPECT_EQ(second_lane, expected);
  EXPECT_EQ(third_lane, expected);
  EXPECT_GT(most_in_parallel.load(), 1) << "parallel tasks never overlapped";
}

// The failure reported is that of the earliest failing chunk, even when a later chunk fails
// first, and ordered tasks still see every chunk before it (as a serial loop would).
TEST(ChunkPipeline, EarliestFailureWinsAndChunksBeforeItFinish) {
  constexpr size_t kSlots = 8;
  std::vector<size_t> value(kSlots);
  std::vector<size_t> handed_over;
  auto check = detail::PipelineTask{false, [&](size_t k, unsigned) -> Status {
    if (value[k] == 5) {  // slow to fail
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      return fail(Errc::kCorrupt, "chunk 5");
    }
    if (value[k] == 7) return fail(Errc::kCorrupt, "chunk 7");
    return {};
  }};
  auto hand_over = detail::PipelineTask{true, [&](size_t k, unsigned) -> Status {
    handed_over.push_back(value[k]);
    return {};
  }};
  detail::ChunkPipeline p({{check}, {hand_over}}, kSlots, 2);
  for (size_t k = 0; k < kSlots; ++k) p.add_free_slot(k);
  for (size_t i = 0; i < 20; ++i) {
    auto k = p.acquire();
    if (!k) break;
    value[*k] = i;
    if (!p.submit(*k)) break;
  }
  Status st = p.drain();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().message(), "chunk 5");
  EXPECT_EQ(handed_over, (std::vector<size_t>{0, 1, 2, 3, 4}));
  EXPECT_FALSE(p.acquire()) << "a failed pipeline takes no more chunks";
}

// Many chunks on every core: decryption hands the sink every chunk in order, the bytes are
// the sealed ones, whatever the number of streams, sizes and legacy hashes.
TEST_F(BundleRoundTrip, ParallelDecryptGivesTheStreamInOrder) {
  const uint32_t cs = kMinChunkSize;
  NamedData streams = {{"big", testing::random_string(300 * cs + 99, 21)},
                       {"small", testing::random_string(cs / 2, 22)},
                       {"exact", testing::random_string(64 * cs, 23)}};
  ASSERT_TRUE(testing::seal_strings(dir / "b.mlfx", keys, streams, cs, true));
  auto r = BundleReader::open(dir / "b.mlfx");
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_TRUE(r->verify_chunks(nullptr));
  auto key = r->unwrap_data_key(*keys.lab.box);
  ASSERT_TRUE(key);
  for (size_t i = 0; i < streams.size(); ++i) {
    std::string got;
    size_t calls = 0;
    Progress bar("t", 0);
    ASSERT_TRUE(r->decrypt_stream(i, key->view(), [&](ByteView b) -> Status {
      EXPECT_LE(b.size(), cs);
      got.append(as_chars(b));
      ++calls;
      return {};
    }, &bar));
    EXPECT_EQ(got, streams[i].second) << streams[i].first;
    EXPECT_EQ(calls, r->manifest().streams[i].chunks);
    // The positioned sink: chunks in any order, from several threads, each at its offset.
    std::string placed(streams[i].second.size(), '\0');
    std::mutex mu;
    std::set<uint64_t> offsets;
    ASSERT_TRUE(r->decrypt_stream_at(i, key->view(), [&](uint64_t at, ByteView b) -> Status {
      EXPECT_LE(at + b.size(), placed.size());
      std::memcpy(placed.data() + at, b.data(), b.size());
      std::lock_guard lk(mu);
      EXPECT_TRUE(offsets.insert(at).second) << "chunk at " << at << " handed over twice";
      return {};
    }, nullptr));
    EXPECT_EQ(placed, streams[i].second) << streams[i].first;
    EXPECT_EQ(offsets.size(), r->manifest().streams[i].chunks);
  }
}

// Two altered chunks: verification and decryption both name the first one, exactly as the
// serial reader did, and the sink saw only the chunks before it.
TEST_F(BundleRoundTrip, TheFirstAlteredChunkFailsAsBefore) {
  const uint32_t cs = kMinChunkSize;
  const std::string data = testing::random_string(40 * cs, 24);
  ASSERT_TRUE(testing::seal_strings(dir / "b.mlfx", keys, {{"s", data}}, cs));
  std::vector<uint64_t> offsets;
  {
    auto r = BundleReader::open(dir / "b.mlfx");
    ASSERT_TRUE(r);
    for (const auto& c : r->layout()[0].chunks) offsets.push_back(c.record_offset);
  }
  std::string raw = testing::read_file(dir / "b.mlfx");
  raw[offsets[30] + kRecordHeaderSize + 5] ^= 1;  // a later chunk, quick to fail
  raw[offsets[3] + kRecordHeaderSize + cs - 1] ^= 0x80;
  testing::write_file(dir / "t.mlfx", raw);
  auto r = BundleReader::open(dir / "t.mlfx");
  ASSERT_TRUE(r) << "the structure is intact";
  const std::string expected = "stream s, chunk 3: SHA-256 does not match the signed chunk table (chunk altered)";
  for (int round = 0; round < 5; ++round) {
    Status v = r->verify_chunks(nullptr);
    ASSERT_FALSE(v);
    EXPECT_EQ(v.error().code(), Errc::kCorrupt);
    EXPECT_EQ(v.error().message(), expected);
    // The chunk's file offset travels as data, printed in hex.
    ASSERT_TRUE(v.error().location());
    EXPECT_EQ(v.error().location()->file_offset, offsets[3]);
    EXPECT_NE(v.error().to_string().find("(layer bundle, file offset " + hex_address(offsets[3]) + ")"), std::string::npos)
        << v.error().to_string();
    auto key = r->unwrap_data_key(*keys.lab.box);
    ASSERT_TRUE(key);
    std::string got;
    Status d = r->decrypt_stream(0, key->view(), [&](ByteView b) -> Status {
      got.append(as_chars(b));
      return {};
    }, nullptr);
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().message(), expected);
    EXPECT_EQ(got, data.substr(0, 3 * cs));
    Status at = r->decrypt_stream_at(0, key->view(), [](uint64_t, ByteView) -> Status { return {}; }, nullptr);
    ASSERT_FALSE(at);
    EXPECT_EQ(at.error().message(), expected);
  }
}

// A sink that fails stops decryption with its own error, after the chunks before.
TEST_F(BundleRoundTrip, SinkFailureStopsDecryption) {
  const uint32_t cs = kMinChunkSize;
  ASSERT_TRUE(testing::seal_strings(dir / "b.mlfx", keys, {{"s", testing::random_string(50 * cs, 25)}}, cs));
  auto r = BundleReader::open(dir / "b.mlfx");
  ASSERT_TRUE(r);
  auto key = r->unwrap_data_key(*keys.lab.box);
  ASSERT_TRUE(key);
  size_t calls = 0;
  Status st = r->decrypt_stream(0, key->view(), [&](ByteView) -> Status {
    if (++calls == 7) return fail(Errc::kIo, "disk full");
    return {};
  }, nullptr);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().message(), "disk full");
  EXPECT_EQ(calls, 7u);
}

// The writer calls its policy's hooks: every pipeline thread starts through it, every chunk
// buffer is shown to it before use, and every byte of the file is reported written, in order.
TEST_F(BundleRoundTrip, WriterCallsItsPolicy) {
  struct Recorder : SealingPolicy {
    std::mutex mu;
    std::condition_variable cv;
    int threads = 0, buffers = 0, waits = 0;
    uint64_t written_to = 0;
    bool in_order = true;
    void pipeline_thread_started() override {
      std::lock_guard lk(mu);
      ++threads;
    }
    void chunk_buffer_mapped(void*, size_t size) override {
      std::lock_guard lk(mu);
      EXPECT_GE(size, kMinChunkSize);
      ++buffers;
    }
    void producer_waiting(bool waiting) override {
      std::lock_guard lk(mu);
      if (waiting) ++waits;
      cv.notify_all();
    }
    void wrote(int, uint64_t offset, uint64_t size) override {
      std::unique_lock lk(mu);
      // The first chunk is held until every buffer is full and the producer waits.
      if (offset == kFileHeaderSize) cv.wait_for(lk, std::chrono::seconds(10), [&] { return waits > 0; });
      if (offset != written_to && !(written_to == 0 && offset == kFileHeaderSize)) in_order = false;
      written_to = offset + size;
    }
  } policy;
  const std::string data = testing::random_string(60 * kMinChunkSize + 1, 26);
  {
    SealParams p;
    p.chunk_size = kMinChunkSize;
    p.buffer_bytes = 0;  // the fewest buffers: the producer waits for sealing
    p.sealer_threads = 3;
    p.policy = &policy;
    auto w = BundleWriter::create(*File::create_new(dir / "b.mlfx", 0600), *keys.device.signing,
                                  {keys.lab.box->public_key()}, p);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->begin_stream("s", "m"));
    ASSERT_TRUE(w->write(as_bytes(data)));
    ASSERT_TRUE(w->end_stream());
    ASSERT_TRUE(w->finish());
  }
  EXPECT_EQ(policy.threads, 3);
  EXPECT_EQ(policy.buffers, 3 + 4);  // a chunk per thread and four more
  EXPECT_GT(policy.waits, 0);
  EXPECT_TRUE(policy.in_order);
  EXPECT_EQ(policy.written_to, std::filesystem::file_size(dir / "b.mlfx"));
  auto r = BundleReader::open(dir / "b.mlfx");
  ASSERT_TRUE(r);
  EXPECT_EQ((*testing::decrypt_all(*r, *keys.lab.box))[0], data);
}

}  // namespace
}  // namespace mlfx::bundle
