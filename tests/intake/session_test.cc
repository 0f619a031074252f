// The intake's protocol state machine (intake::IntakeSession) over a real evidence store, with
// no sockets: frames in, frames out. Bundles are sealed in-process; restarts are a fresh
// EvidenceStore on the same directory.
#include <gtest/gtest.h>

#include <fcntl.h>

#include <algorithm>
#include <random>

#include "bundle_fixture.h"
#include "intake/evidence_store.h"
#include "intake/intake_session.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx::intake {
namespace {

namespace fs = std::filesystem;
using testing::read_file;
using wire::FrameType;

constexpr uint32_t kMaxRecord = 1u << 20;

struct Unit {
  uint64_t offset = 0, size = 0;
};

// A sealed bundle, its bytes and its units.
struct TestBundle {
  std::string path;
  Bytes file;
  wire::Offer offer;
  std::string device_id;  // the manifest's
  std::vector<Unit> metadata;  // file order, END last
  std::vector<Unit> chunks;    // file order

  ByteView unit(const Unit& u) const { return ByteView(file).subspan(u.offset, u.size); }
};

TestBundle make_bundle(const testing::TempDir& dir, const testing::TestKeys& keys, const std::string& name,
                       uint64_t seed, uint32_t chunk_size = bundle::kMinChunkSize) {
  TestBundle b;
  b.path = dir / name;
  auto m = testing::seal_strings(b.path, keys,
                                 {{"memory", testing::random_string(9 * chunk_size + 123, seed)},
                                  {"registers", testing::random_string(3 * chunk_size, seed + 1)}},
                                 chunk_size);
  EXPECT_TRUE(m) << m.error().to_string();
  const std::string text = read_file(b.path);
  b.file.assign(text.begin(), text.end());
  auto r = bundle::BundleReader::open(b.path);
  EXPECT_TRUE(r) << r.error().to_string();
  for (const auto& u : r->metadata_units()) b.metadata.push_back({u.offset, u.size});
  for (const auto& s : r->layout())
    for (const auto& c : s.chunks)
      b.chunks.push_back({c.record_offset, bundle::kRecordHeaderSize + c.plaintext_size + crypto::kTagSize});
  std::sort(b.chunks.begin(), b.chunks.end(), [](const Unit& x, const Unit& y) { return x.offset < y.offset; });
  b.offer.bundle_id = m->bundle_id_hex();
  b.offer.file_size = b.file.size();
  auto digest = r->digest();
  EXPECT_TRUE(digest);
  b.offer.bundle_digest = digest ? *digest : "";
  b.offer.chunk_size = chunk_size;
  b.device_id = m ? m->device.id : "";
  return b;
}

struct Reply {
  std::vector<std::pair<FrameType, std::string>> frames;
  bool close = false;
  // The ERROR code of the only frame, or "" when it is not an ERROR.
  std::string error() const {
    if (frames.size() != 1 || frames[0].first != FrameType::kError) return "";
    auto e = wire::parse_error(as_bytes(frames[0].second));
    return e ? wire::wire_error_name(e->code) : "unparsable ERROR";
  }
};

Reply decode(const SessionReply& r) {
  Reply out;
  out.close = r.close;
  for (const Bytes& f : r.frames) {
    EXPECT_GE(f.size(), wire::kFrameHeaderSize);
    EXPECT_EQ(load_le<uint32_t>(f.data()), f.size() - wire::kFrameHeaderSize);
    EXPECT_EQ(load_le<uint16_t>(f.data() + 6), 0u);
    out.frames.emplace_back(FrameType(load_le<uint16_t>(f.data() + 4)),
                            std::string(reinterpret_cast<const char*>(f.data()) + wire::kFrameHeaderSize,
                                        f.size() - wire::kFrameHeaderSize));
  }
  return out;
}

std::string describe(const Reply& r) {
  std::string s;
  for (const auto& [t, body] : r.frames) s += std::string(wire::frame_type_name(t)) + " " + body.substr(0, 300) + "\n";
  return s + (r.close ? "(close)" : "");
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    intake_key_ = *crypto::SigningKey::generate();
    open_store();
    who_ = {"car-1", keys_.device.signing->public_key().fingerprint(), "0a0b", "127.0.0.1:4000"};
    bundle_ = make_bundle(dir_, keys_, "b.mlfx", 1);
    who_.device_id = bundle_.device_id;  // the certificate's id is the manifest's (wire-protocol.md §5.2)
  }

  void open_store() {
    store_.reset();
    auto s = EvidenceStore::open(dir_ / "store", intake_key_, custody::Actor{"intake", "test-intake", "lab", "root"},
                                 StoreLimits{});
    ASSERT_TRUE(s) << s.error().to_string();
    store_ = std::move(*s);
  }

  std::unique_ptr<IntakeSession> session(const Uploader& who) {
    auto s = std::make_unique<IntakeSession>(*store_, who, kMaxRecord);
    Reply r = decode(s->handle(FrameType::kHello, as_bytes(json::canonical(wire::to_json(wire::Hello{{1}, "test"})))));
    EXPECT_EQ(r.frames.size(), 1u);
    EXPECT_EQ(r.frames[0].first, FrameType::kWelcome) << describe(r);
    auto w = wire::parse_welcome(as_bytes(r.frames[0].second));
    EXPECT_TRUE(w);
    if (w) {
      EXPECT_EQ(w->device_id, who.device_id);
      EXPECT_EQ(w->key_fingerprint, who.key_fingerprint);
      EXPECT_EQ(w->max_record, kMaxRecord);
      EXPECT_EQ(w->intake_key_fingerprint, intake_key_.public_key().fingerprint());
    }
    return s;
  }

  static Reply offer(IntakeSession& s, const wire::Offer& o) {
    return decode(s.handle(FrameType::kOffer, as_bytes(json::canonical(wire::to_json(o)))));
  }
  static wire::UploadStatus status_of(const Reply& r) {
    EXPECT_EQ(r.frames.size(), 1u) << describe(r);
    EXPECT_EQ(r.frames.at(0).first, FrameType::kStatus) << describe(r);
    auto st = wire::parse_status(as_bytes(r.frames.at(0).second));
    EXPECT_TRUE(st) << r.frames.at(0).second;
    return st ? *st : wire::UploadStatus{};
  }
  static Reply record(IntakeSession& s, uint64_t offset, ByteView unit) {
    const Bytes body = wire::encode_record_body(offset, unit);
    return decode(s.handle(FrameType::kRecord, body));
  }
  static Reply send(IntakeSession& s, const TestBundle& b, const Unit& u) { return record(s, u.offset, b.unit(u)); }
  // Sends units, expecting no answer to any but possibly the last; returns the last answer.
  static Reply send_all(IntakeSession& s, const TestBundle& b, const std::vector<Unit>& units) {
    Reply last;
    for (size_t i = 0; i < units.size(); ++i) {
      last = send(s, b, units[i]);
      if (i + 1 < units.size()) {
        EXPECT_TRUE(last.frames.empty() && !last.close) << "unit at " << units[i].offset << ": " << describe(last);
        if (!last.frames.empty()) return last;
      }
    }
    return last;
  }

  // A RECEIPT whose signature verifies under the intake key and that names this bundle.
  wire::SignedReceipt expect_receipt(const Reply& r, const TestBundle& b) {
    EXPECT_EQ(r.frames.size(), 1u) << describe(r);
    EXPECT_FALSE(r.close);
    if (r.frames.empty() || r.frames[0].first != FrameType::kReceipt) {
      ADD_FAILURE() << "no RECEIPT: " << describe(r);
      return {};
    }
    auto rc = wire::parse_receipt(as_bytes(r.frames[0].second));
    EXPECT_TRUE(rc);
    if (!rc) return {};
    EXPECT_TRUE(store_->intake_key().verify(wire::receipt_signing_message(rc->receipt), rc->signature));
    EXPECT_TRUE(intake_key_.public_key().verify(wire::receipt_signing_message(rc->receipt), rc->signature));
    wire::SignedReceipt forged = *rc;
    forged.receipt.file_size += 1;
    EXPECT_FALSE(intake_key_.public_key().verify(wire::receipt_signing_message(forged.receipt), forged.signature));
    EXPECT_EQ(rc->receipt.bundle_digest, b.offer.bundle_digest);
    EXPECT_EQ(rc->receipt.bundle_id, b.offer.bundle_id);
    EXPECT_EQ(rc->receipt.file_size, b.file.size());
    EXPECT_EQ(rc->receipt.device_key_fingerprint, who_.key_fingerprint);
    EXPECT_EQ(rc->receipt.stored_as, "objects/" + b.offer.bundle_digest + ".mlfx");
    const std::string stem = store_->dir() + "/objects/" + b.offer.bundle_digest;
    EXPECT_TRUE(fs::exists(stem + ".mlfx"));
    EXPECT_EQ(read_file(stem + ".mlfx"), read_file(b.path)) << "stored byte for byte";
    EXPECT_TRUE(fs::exists(stem + ".custody.jsonl"));
    EXPECT_NE(read_file(stem + ".custody.jsonl").find("\"received\""), std::string::npos);
    EXPECT_EQ(read_file(stem + ".receipt.json"), r.frames[0].second);
    EXPECT_TRUE(store_->find(b.offer.bundle_digest));
    EXPECT_TRUE(partials(who_).empty()) << "no partial upload is left";
    return *rc;
  }

  std::string partial_dir(const Uploader& who) const {
    return store_->dir() + "/partial/" + fingerprint_hex(who.key_fingerprint);
  }
  std::string partial_path(const Uploader& who, const TestBundle& b) const {
    return partial_dir(who) + "/" + b.offer.bundle_id + "-" + b.offer.bundle_digest + ".part";
  }
  std::vector<std::string> partials(const Uploader& who) const { return testing::list_dir(partial_dir(who)); }

  std::vector<wire::ByteRange> ranges(const std::vector<Unit>& units) {
    std::vector<wire::ByteRange> r;
    for (const Unit& u : units) r.push_back({u.offset, u.size});
    return wire::normalize_ranges(r);
  }

  testing::TempDir dir_;
  testing::TestKeys keys_ = testing::make_keys();
  crypto::SigningKey intake_key_;
  std::unique_ptr<EvidenceStore> store_;
  Uploader who_;
  TestBundle bundle_;
};

TEST_F(SessionTest, FullUploadInOrderGetsASignedReceiptAndStoresTheBundle) {
  ASSERT_GE(bundle_.chunks.size(), 10u);
  auto s = session(who_);
  auto st = status_of(offer(*s, bundle_.offer));
  EXPECT_EQ(st.state, wire::UploadState::kNew);
  EXPECT_TRUE(st.have.empty());
  EXPECT_TRUE(fs::exists(partial_path(who_, bundle_)));
  Reply r = send_all(*s, bundle_, bundle_.metadata);
  EXPECT_TRUE(r.frames.empty()) << describe(r);
  r = send_all(*s, bundle_, bundle_.chunks);
  expect_receipt(r, bundle_);
  auto ups = s->uploads();
  ASSERT_EQ(ups.size(), 1u);
  EXPECT_EQ(ups[0].result, "stored");
  EXPECT_EQ(ups[0].received_bytes, bundle_.file.size());
  // The session takes the next offer on the same connection.
  TestBundle second = make_bundle(dir_, keys_, "c.mlfx", 7);
  EXPECT_EQ(status_of(offer(*s, second.offer)).state, wire::UploadState::kNew);
  send_all(*s, second, second.metadata);
  expect_receipt(send_all(*s, second, second.chunks), second);
}

TEST_F(SessionTest, ChunksInAnyOrderAfterTheMetadata) {
  auto s = session(who_);
  status_of(offer(*s, bundle_.offer));
  EXPECT_TRUE(send_all(*s, bundle_, bundle_.metadata).frames.empty());
  std::vector<Unit> chunks = bundle_.chunks;
  std::reverse(chunks.begin(), chunks.end());
  std::shuffle(chunks.begin() + 1, chunks.end(), std::mt19937(5));
  // A unit sent twice is accepted and ignored.
  Reply r = send(*s, bundle_, chunks[0]);
  EXPECT_TRUE(r.frames.empty()) << describe(r);
  r = send(*s, bundle_, chunks[0]);
  EXPECT_TRUE(r.frames.empty()) << describe(r);
  chunks.erase(chunks.begin());
  expect_receipt(send_all(*s, bundle_, chunks), bundle_);
}

// The server hands the session the connection's frame buffer (FrameChannel::buffer()): a chunk
// record's buffer is taken, not copied, and checked and written from there (its aligned middle
// with direct I/O where the file system allows it); metadata units leave the buffer alone.
// A unit placed off its alignment (no direct I/O possible) is stored just as well. Chunks of
// 64 KiB: each record has pages for direct I/O and unaligned ends.
TEST_F(SessionTest, ChunkRecordsTakeTheFrameBufferAndAreStoredByteForByte) {
  for (const bool aligned : {true, false}) {
    SCOPED_TRACE(aligned ? "units at their file offset's alignment" : "units off their alignment");
    TestBundle b = make_bundle(dir_, keys_, aligned ? "aligned.mlfx" : "unaligned.mlfx", aligned ? 11 : 12, 64u << 10);
    auto s = session(who_);
    status_of(offer(*s, b.offer));
    transport::FrameBuffer buffer;
    auto send_in_buffer = [&](const Unit& u) {
      // As FrameChannel::read lays out a RECORD: the offset just before the unit.
      const size_t unit_at = transport::FrameBuffer::unit_start(u.offset) + (aligned ? 0 : 1);
      buffer.reserve(unit_at + u.size);
      const uint8_t* before = buffer.data();
      store_le<uint64_t>(buffer.data() + unit_at - wire::kRecordOffsetSize, u.offset);
      std::memcpy(buffer.data() + unit_at, b.unit(u).data(), u.size);
      const ByteView body(buffer.data() + unit_at - wire::kRecordOffsetSize, wire::kRecordOffsetSize + u.size);
      Reply r = decode(s->handle(FrameType::kRecord, body, &buffer));
      return std::make_pair(r, buffer.data() != before);
    };
    for (const Unit& u : b.metadata) {
      auto [r, taken] = send_in_buffer(u);
      EXPECT_TRUE(r.frames.empty()) << describe(r);
      EXPECT_FALSE(taken) << "a metadata unit is written from the frame, which stays the channel's";
    }
    Reply last;
    size_t taken_count = 0;
    for (const Unit& u : b.chunks) {
      auto [r, taken] = send_in_buffer(u);
      last = r;
      taken_count += taken;
    }
    EXPECT_EQ(taken_count, b.chunks.size()) << "every chunk record's buffer moved on to the checker";
    expect_receipt(last, b);
  }
}

TEST_F(SessionTest, AChunkBeforeTheMetadataIsABadRecord) {
  auto s = session(who_);
  status_of(offer(*s, bundle_.offer));
  Reply r = send(*s, bundle_, bundle_.chunks[0]);
  EXPECT_EQ(r.error(), "bad_record") << describe(r);
  EXPECT_TRUE(r.close);
}

TEST_F(SessionTest, ResumeInANewSessionSendsOnlyTheRest) {
  std::vector<Unit> first, rest;
  for (size_t i = 0; i < bundle_.chunks.size(); ++i) (i % 3 == 1 ? rest : first).push_back(bundle_.chunks[i]);
  {
    auto s = session(who_);
    status_of(offer(*s, bundle_.offer));
    send_all(*s, bundle_, bundle_.metadata);
    Reply r = send_all(*s, bundle_, first);
    EXPECT_TRUE(r.frames.empty()) << describe(r);
    // The connection drops here: the session ends without a word.
  }
  std::vector<Unit> held = bundle_.metadata;
  held.insert(held.end(), first.begin(), first.end());
  auto s = session(who_);
  auto st = status_of(offer(*s, bundle_.offer));
  EXPECT_EQ(st.state, wire::UploadState::kPartial);
  EXPECT_EQ(st.have, ranges(held));
  EXPECT_GT(st.have.size(), 2u) << "several separate ranges";
  expect_receipt(send_all(*s, bundle_, rest), bundle_);
  EXPECT_EQ(s->uploads().back().received_bytes, [&] {
    uint64_t n = 0;
    for (const Unit& u : rest) n += u.size;
    return n;
  }());
}

TEST_F(SessionTest, ARestartedStoreRebuildsHaveByHashingAndSkipsATornChunk) {
  // Chunks 0..6 arrive, then the server dies while chunk 7 is half written.
  const size_t sent = 7;
  {
    auto s = session(who_);
    status_of(offer(*s, bundle_.offer));
    send_all(*s, bundle_, bundle_.metadata);
    send_all(*s, bundle_, std::vector<Unit>(bundle_.chunks.begin(), bundle_.chunks.begin() + sent));
  }
  open_store();  // a new process: nothing in memory
  const Unit torn = bundle_.chunks[3], half = bundle_.chunks[sent];
  {
    const std::string part = partial_path(who_, bundle_);
    int fd = ::open(part.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << part;
    File f(fd, part);
    Bytes zeros(torn.size / 2, 0);
    ASSERT_TRUE(f.pwrite_all(torn.offset + torn.size - zeros.size(), zeros));  // its tail never reached the disk
    ASSERT_TRUE(f.pwrite_all(half.offset, bundle_.unit(half).first(half.size / 2)));
  }
  std::vector<Unit> held = bundle_.metadata, missing;
  for (size_t i = 0; i < bundle_.chunks.size(); ++i)
    (i < sent && i != 3 ? held : missing).push_back(bundle_.chunks[i]);
  auto s = session(who_);
  auto st = status_of(offer(*s, bundle_.offer));
  EXPECT_EQ(st.state, wire::UploadState::kPartial);
  EXPECT_EQ(st.have, ranges(held));
  expect_receipt(send_all(*s, bundle_, missing), bundle_);
}

TEST_F(SessionTest, ARestartedStoreWithoutCompleteMetadataStartsOver) {
  {
    auto s = session(who_);
    status_of(offer(*s, bundle_.offer));
    send_all(*s, bundle_, std::vector<Unit>(bundle_.metadata.begin(), bundle_.metadata.end() - 1));
  }
  open_store();
  auto s = session(who_);
  auto st = status_of(offer(*s, bundle_.offer));
  EXPECT_TRUE(st.have.empty()) << "metadata is held only once it was checked as a whole";
  send_all(*s, bundle_, bundle_.metadata);
  expect_receipt(send_all(*s, bundle_, bundle_.chunks), bundle_);
}

TEST_F(SessionTest, MetadataOfAnotherDeviceIsWrongDeviceAndNothingIsKept) {
  auto other = *crypto::SigningKey::generate();
  Uploader thief{"thief", other.public_key().fingerprint(), "0c", "127.0.0.1:4001"};
  auto s = session(thief);
  status_of(offer(*s, bundle_.offer));
  EXPECT_EQ(partials(thief).size(), 1u);
  Reply r = send_all(*s, bundle_, bundle_.metadata);
  EXPECT_EQ(r.error(), "wrong_device") << describe(r);
  EXPECT_TRUE(r.close);
  EXPECT_TRUE(partials(thief).empty()) << "the partial upload is deleted";
  EXPECT_EQ(s->uploads().back().result, "wrong_device");
  EXPECT_TRUE(decode(s->handle(FrameType::kRecord, wire::encode_record_body(0, bundle_.unit(bundle_.chunks[0])))).close);
  // The rightful device uploads it afterwards.
  auto good = session(who_);
  EXPECT_EQ(status_of(offer(*good, bundle_.offer)).state, wire::UploadState::kNew);
  send_all(*good, bundle_, bundle_.metadata);
  const auto receipt = expect_receipt(send_all(*good, bundle_, bundle_.chunks), bundle_);
  // And once it is stored, the other device cannot claim it.
  auto again = session(thief);
  EXPECT_EQ(offer(*again, bundle_.offer).error(), "wrong_device");
}

TEST_F(SessionTest, ATamperedManifestIsBadBundle) {
  Unit mnft{};
  for (const Unit& u : bundle_.metadata)
    if (load_le<uint32_t>(bundle_.file.data() + u.offset) == uint32_t(bundle::RecordType::kManifest)) mnft = u;
  ASSERT_GT(mnft.size, 0u);
  TestBundle bad = bundle_;
  // A digit of the manifest's JSON changes: still well-formed, no longer what was signed.
  const std::string text(reinterpret_cast<const char*>(bad.file.data()) + mnft.offset, mnft.size);
  size_t at = text.find_first_of("0123456789", bundle::kRecordHeaderSize + 10);
  ASSERT_NE(at, std::string::npos);
  bad.file[mnft.offset + at] = bad.file[mnft.offset + at] == '1' ? '2' : '1';
  auto s = session(who_);
  status_of(offer(*s, bad.offer));
  Reply r = send_all(*s, bad, bad.metadata);
  EXPECT_EQ(r.error(), "bad_bundle") << describe(r);
  EXPECT_TRUE(r.close);
  EXPECT_TRUE(partials(who_).empty());
  // Garbage in place of the manifest: bad_bundle too.
  TestBundle worse = bundle_;
  std::fill(worse.file.begin() + mnft.offset + bundle::kRecordHeaderSize, worse.file.begin() + mnft.offset + mnft.size,
            uint8_t('x'));
  s = session(who_);
  status_of(offer(*s, worse.offer));
  r = send_all(*s, worse, worse.metadata);
  EXPECT_EQ(r.error(), "bad_bundle") << describe(r);
  EXPECT_TRUE(partials(who_).empty());
}

TEST_F(SessionTest, AChunkThatDoesNotMatchItsSignedHashIsBadRecordAndEarlierUnitsStay) {
  auto s = session(who_);
  status_of(offer(*s, bundle_.offer));
  send_all(*s, bundle_, bundle_.metadata);
  send_all(*s, bundle_, {bundle_.chunks[0], bundle_.chunks[1]});
  Bytes flipped(bundle_.unit(bundle_.chunks[2]).begin(), bundle_.unit(bundle_.chunks[2]).end());
  flipped[flipped.size() / 2] ^= 0x40;
  Reply r = record(*s, bundle_.chunks[2].offset, flipped);
  if (r.frames.empty()) r = send(*s, bundle_, bundle_.chunks[3]);  // checked by the worker: reported by the next call
  EXPECT_EQ(r.error(), "bad_record") << describe(r);
  EXPECT_TRUE(r.close);
  s.reset();
  std::vector<Unit> held = bundle_.metadata;
  held.push_back(bundle_.chunks[0]);
  held.push_back(bundle_.chunks[1]);
  s = session(who_);
  EXPECT_EQ(status_of(offer(*s, bundle_.offer)).have, ranges(held));
  // The next connection sends the rest, the good chunk among it, and the bad record of the
  // earlier connection is not held against it.
  expect_receipt(send_all(*s, bundle_, std::vector<Unit>(bundle_.chunks.begin() + 2, bundle_.chunks.end())), bundle_);
}

TEST_F(SessionTest, ARecordOffItsUnitIsBadRecord) {
  auto s = session(who_);
  status_of(offer(*s, bundle_.offer));
  send_all(*s, bundle_, bundle_.metadata);
  Reply r = record(*s, bundle_.chunks[2].offset + 1, bundle_.unit(bundle_.chunks[2]));
  EXPECT_EQ(r.error(), "bad_record") << describe(r);
  s = session(who_);
  status_of(offer(*s, bundle_.offer));
  r = record(*s, bundle_.chunks[2].offset, bundle_.unit(bundle_.chunks[2]).first(100));  // not the whole unit
  EXPECT_EQ(r.error(), "bad_record") << describe(r);
}

// The offer names the bundle by its digest; metadata with another digest is refused before any
// chunk is taken.
TEST_F(SessionTest, AWrongDigestIsBadBundleAndTheUploadIsDiscarded) {
  wire::Offer lie = bundle_.offer;
  lie.bundle_digest = std::string(64, 'a');
  auto s = session(who_);
  status_of(offer(*s, lie));
  Reply r = send_all(*s, bundle_, bundle_.metadata);
  EXPECT_EQ(r.error(), "bad_bundle") << describe(r);
  EXPECT_NE(describe(r).find("digest"), std::string::npos) << describe(r);
  EXPECT_TRUE(partials(who_).empty());
  EXPECT_TRUE(testing::list_dir(store_->dir() + "/objects").empty());
}

TEST_F(SessionTest, TheSameOfferFromTwoSessionsAtOnceIsBusy) {
  auto a = session(who_);
  EXPECT_EQ(status_of(offer(*a, bundle_.offer)).state, wire::UploadState::kNew);
  send_all(*a, bundle_, bundle_.metadata);
  auto b = session(who_);
  Reply r = offer(*b, bundle_.offer);
  EXPECT_EQ(r.error(), "busy") << describe(r);
  EXPECT_TRUE(r.close);
  // Once the first connection is gone the upload is free again, and nothing of it was lost.
  a.reset();
  auto c = session(who_);
  auto st = status_of(offer(*c, bundle_.offer));
  EXPECT_EQ(st.have, ranges(bundle_.metadata));
  expect_receipt(send_all(*c, bundle_, bundle_.chunks), bundle_);
}

TEST_F(SessionTest, ANewOfferOnTheSameSessionReleasesTheFirst) {
  auto a = session(who_);
  status_of(offer(*a, bundle_.offer));
  TestBundle second = make_bundle(dir_, keys_, "c.mlfx", 9);
  status_of(offer(*a, second.offer));  // the first upload is abandoned, still resumable
  auto b = session(who_);
  EXPECT_EQ(status_of(offer(*b, bundle_.offer)).state, wire::UploadState::kNew);
}

TEST_F(SessionTest, ADuplicateOfferOfAStoredBundleGetsTheSameReceipt) {
  auto a = session(who_);
  status_of(offer(*a, bundle_.offer));
  send_all(*a, bundle_, bundle_.metadata);
  const auto first = expect_receipt(send_all(*a, bundle_, bundle_.chunks), bundle_);
  for (int restart = 0; restart < 2; ++restart) {
    if (restart) open_store();
    auto b = session(who_);
    Reply r = offer(*b, bundle_.offer);
    auto st = status_of(r);
    EXPECT_FALSE(r.close);
    EXPECT_EQ(st.state, wire::UploadState::kStored);
    EXPECT_TRUE(st.have.empty());
    ASSERT_TRUE(st.receipt);
    EXPECT_EQ(wire::to_json(*st.receipt), wire::to_json(first));
    EXPECT_EQ(b->uploads().back().result, "duplicate");
    EXPECT_TRUE(partials(who_).empty()) << "a duplicate starts no partial upload";
  }
}

// The reader takes no RECORD before an accepted OFFER, then none larger than the offer's
// metadata can have, then none larger than one of its chunk records; none once it is stored.
TEST_F(SessionTest, TheRecordLimitFollowsTheState) {
  IntakeSession fresh(*store_, who_, kMaxRecord);
  EXPECT_EQ(fresh.max_record(), 0u) << "before HELLO";
  auto s = session(who_);
  EXPECT_EQ(s->max_record(), 0u) << "after HELLO";
  status_of(offer(*s, bundle_.offer));
  EXPECT_EQ(s->max_record(), metadata_unit_limit(bundle_.offer) + wire::kRecordOffsetSize);
  EXPECT_LE(s->max_record(), bundle_.file.size() + wire::kRecordOffsetSize);
  send_all(*s, bundle_, bundle_.metadata);
  EXPECT_EQ(s->max_record(), bundle::kMinChunkSize + bundle::kRecordHeaderSize + crypto::kTagSize + wire::kRecordOffsetSize);
  expect_receipt(send_all(*s, bundle_, bundle_.chunks), bundle_);
  EXPECT_EQ(s->max_record(), 0u) << "stored: only an OFFER may follow";
}

// The manifest's device id must be the certificate's, like its key: nothing of a bundle filed
// under another name is kept.
TEST_F(SessionTest, AManifestNamingAnotherDeviceIdIsWrongDevice) {
  Uploader renamed = who_;
  renamed.device_id = "jetson-07";
  auto s = session(renamed);
  status_of(offer(*s, bundle_.offer));
  Reply r = send_all(*s, bundle_, bundle_.metadata);
  EXPECT_EQ(r.error(), "wrong_device") << describe(r);
  EXPECT_NE(describe(r).find("jetson-07"), std::string::npos) << describe(r);
  EXPECT_TRUE(r.close);
  EXPECT_TRUE(partials(who_).empty());
}

TEST_F(SessionTest, OutOfOrderAndMalformedMessages) {
  {
    IntakeSession s(*store_, who_, kMaxRecord);
    Reply r = offer(s, bundle_.offer);  // before HELLO
    EXPECT_EQ(r.error(), "bad_frame") << describe(r);
    EXPECT_TRUE(r.close);
  }
  {
    IntakeSession s(*store_, who_, kMaxRecord);
    Reply r = decode(s.handle(FrameType::kHello, as_bytes("{not json")));
    EXPECT_EQ(r.error(), "bad_frame") << describe(r);
  }
  {
    IntakeSession s(*store_, who_, kMaxRecord);
    Reply r = decode(s.handle(FrameType::kHello, as_bytes(json::canonical(wire::to_json(wire::Hello{{7}, "x"})))));
    EXPECT_EQ(r.error(), "unsupported_version") << describe(r);
  }
  {
    auto s = session(who_);
    Reply r = record(*s, 0, bundle_.unit(bundle_.metadata[0]));  // before OFFER
    EXPECT_EQ(r.error(), "bad_frame") << describe(r);
  }
  {
    auto s = session(who_);
    Reply r = decode(s->handle(FrameType::kPing, as_bytes("{}")));
    ASSERT_EQ(r.frames.size(), 1u);
    EXPECT_EQ(r.frames[0].first, FrameType::kPong);
    wire::Offer o = bundle_.offer;
    o.chunk_size = 1;
    EXPECT_EQ(offer(*s, o).error(), "bad_frame");
  }
  {
    auto s = session(who_);
    wire::Offer o = bundle_.offer;
    o.file_size = uint64_t(1) << 62;
    EXPECT_EQ(offer(*s, o).error(), "bundle_too_large");
  }
  {
    auto s = session(who_);
    wire::Offer o = bundle_.offer;
    o.file_size = 10;
    EXPECT_EQ(offer(*s, o).error(), "bad_bundle");
  }
  {
    auto s = session(who_);
    wire::Offer o = bundle_.offer;
    o.chunk_size = 8u << 20;  // chunks that cannot fit this intake's records
    EXPECT_EQ(offer(*s, o).error(), "bundle_too_large");
  }
  EXPECT_TRUE(partials(who_).empty());
}

}  // namespace
}  // namespace mlfx::intake
