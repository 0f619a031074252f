// The tamper campaign: every mutation of a sealed bundle (bit flips at >= 1,000 positions
// spread over every region, truncations, reordered / duplicated / removed records, splices
// between two bundles, re-signed manifests) must be detected by `verify` and must make
// `open` fail without leaving any output behind.
#include <gtest/gtest.h>

#include <map>

#include "bundle_fixture.h"
#include "evidence/bundle_check.h"
#include "mlfx/base/host.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx {
namespace {

using bundle::kRecordHeaderSize;

struct Record {
  uint32_t type;
  uint64_t offset, size;  // size = header + payload
  uint32_t stream;
  uint64_t sequence;
};

// An independent, minimal walk over record headers (the reader is what is under test).
std::vector<Record> records_of(const std::string& b) {
  std::vector<Record> out;
  uint64_t off = bundle::kFileHeaderSize;
  while (off + kRecordHeaderSize <= b.size()) {
    auto p = reinterpret_cast<const uint8_t*>(b.data()) + off;
    Record r{load_le<uint32_t>(p), off, kRecordHeaderSize + load_le<uint64_t>(p + 8),
             load_le<uint32_t>(p + 16), load_le<uint64_t>(p + 24)};
    out.push_back(r);
    off += r.size;
  }
  return out;
}

struct Region {
  std::string name;
  uint64_t begin, end;
};

std::vector<Region> regions_of(const std::string& b) {
  std::vector<Region> out = {{"file header", 0, bundle::kFileHeaderSize}};
  for (const auto& r : records_of(b)) {
    std::string name = bundle::record_type_name(r.type);
    if (r.type == uint32_t(bundle::RecordType::kChunk))
      name += " s" + std::to_string(r.stream) + "#" + std::to_string(r.sequence);
    out.push_back({name + " header", r.offset, r.offset + kRecordHeaderSize});
    if (r.size > kRecordHeaderSize) out.push_back({name + " payload", r.offset + kRecordHeaderSize, r.offset + r.size});
  }
  return out;
}

class TamperCampaign : public ::testing::Test {
 protected:
  void SetUp() override {
    // Two bundles with identically shaped streams, so that any record of one fits the other.
    const uint32_t cs = bundle::kMinChunkSize;
    testing::NamedData a = {{"cpu", testing::random_string(10 * cs + 100, 1)},
                            {"gpu", testing::random_string(10 * cs + 100, 2)},
                            {"context", testing::random_string(300, 3)}};
    testing::NamedData b = {{"cpu", testing::random_string(10 * cs + 100, 4)},
                            {"gpu", testing::random_string(10 * cs + 100, 5)},
                            {"context", testing::random_string(300, 6)}};
    ASSERT_TRUE(testing::seal_strings(dir / "a.mlfx", keys, a));
    ASSERT_TRUE(testing::seal_strings(dir / "b.mlfx", keys, b));
    good = testing::read_file(dir / "a.mlfx");
    other = testing::read_file(dir / "b.mlfx");
    ASSERT_EQ(good.size(), other.size());
    ASSERT_TRUE(evidence::verify_bundle(dir / "a.mlfx", {"", false}).intact());
    recs = records_of(good);
    ASSERT_EQ(recs.back().offset + recs.back().size, good.size());
  }

  // Writes `mutated`, then asserts verify fails and open fails leaving nothing behind.
  void expect_detected(const std::string& mutated, const std::string& what) {
    ASSERT_NE(mutated, good) << what;
    const std::string path = dir / "m.mlfx", out = dir / "out";
    testing::fs::remove(path);
    testing::write_file(path, mutated);
    evidence::VerifyReport report = evidence::verify_bundle(path, {"", false});
    EXPECT_FALSE(report.intact()) << "undetected by verify: " << what;
    if (!report.intact()) {
      EXPECT_FALSE(report.lines.back().ok());
      EXPECT_FALSE(report.lines.back().detail.empty());
      ++failures_by_check[report.lines.back().check];
    }
    auto opened = evidence::open_bundle(path, keys.lab, out, {"", false});
    EXPECT_FALSE(opened) << "undetected by open: " << what;
    EXPECT_FALSE(testing::fs::exists(out)) << "open left output behind: " << what;
    std::error_code ec;
    testing::fs::permissions(out, testing::fs::perms::owner_all, testing::fs::perm_options::add, ec);
    testing::fs::remove_all(out, ec);
    ++mutations;
    EXPECT_EQ(testing::read_file(path), mutated) << "evidence modified: " << what;
  }

  std::string record_bytes(const std::string& file, const Record& r) { return file.substr(r.offset, r.size); }
  const Record& find(uint32_t type, uint32_t stream = bundle::kNoStream, uint64_t seq = 0) {
    for (const auto& r : recs)
      if (r.type == type && (stream == bundle::kNoStream || (r.stream == stream && r.sequence == seq))) return r;
    throw std::runtime_error("record not found");
  }

  testing::TempDir dir;
  testing::TestKeys keys = testing::make_keys();
  std::string good, other;
  std::vector<Record> recs;
  size_t mutations = 0;
  std::map<std::string, int> failures_by_check;
};

TEST_F(TamperCampaign, BitFlipsInEveryRegion) {
  auto regions = regions_of(good);
  uint64_t total = good.size();
  size_t positions = 0;
  for (const auto& reg : regions) {
    uint64_t len = reg.end - reg.begin;
    uint64_t n = std::min<uint64_t>(len, 8 + len * 1100 / total);
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t pos = reg.begin + (n == 1 ? 0 : i * (len - 1) / (n - 1));
      std::string m = good;
      m[pos] = static_cast<char>(m[pos] ^ (1 << (positions % 8)));
      expect_detected(m, "bit flip in " + reg.name + " at offset " + std::to_string(pos));
      ++positions;
    }
  }
  EXPECT_GE(positions, 1000u);
  EXPECT_GE(regions.size(), 30u);
  // Flips are caught by every layer of checks, not all by one.
  for (const char* check : {"structure", "signature", "chunks", "custody"})
    EXPECT_GT(failures_by_check[check], 0) << check;
}

TEST_F(TamperCampaign, Truncations) {
  std::vector<uint64_t> lengths = {0, 1, 8, 63, 64, 65};
  for (const auto& r : recs)
    for (int64_t d : {-1, 0, 1, 31, 32, 33}) lengths.push_back(r.offset + static_cast<uint64_t>(d));
  for (uint64_t i = 1; i <= 150; ++i) lengths.push_back(good.size() * i / 151);
  lengths.push_back(good.size() - 1);
  for (uint64_t len : lengths)
    if (len < good.size()) expect_detected(good.substr(0, len), "truncated to " + std::to_string(len));
  expect_detected(good + std::string(1, '\0'), "one byte appended");
  expect_detected(good + good.substr(recs.back().offset), "end record appended twice");
}

TEST_F(TamperCampaign, ReorderedDuplicatedAndRemovedRecords) {
  const uint32_t chunk = uint32_t(bundle::RecordType::kChunk);
  const Record& c2 = find(chunk, 0, 2);
  const Record& c3 = find(chunk, 0, 3);
  std::string m = good;
  m.replace(c2.offset, c2.size, record_bytes(good, c3));
  m.replace(c3.offset, c3.size, record_bytes(good, c2));
  expect_detected(m, "chunks 2 and 3 swapped");

  expect_detected(good.substr(0, c3.offset) + record_bytes(good, c2) + good.substr(c3.offset),
                  "chunk 2 duplicated");
  expect_detected(good.substr(0, c2.offset) + good.substr(c3.offset), "chunk 2 removed");
  const Record& last = find(chunk, 0, 10);
  expect_detected(good.substr(0, last.offset + last.size) + record_bytes(good, last) +
                      good.substr(last.offset + last.size),
                  "final chunk duplicated");
  const Record& table = find(uint32_t(bundle::RecordType::kChunkTable));
  expect_detected(good.substr(0, table.offset + table.size) + record_bytes(good, table) +
                      good.substr(table.offset + table.size),
                  "chunk table duplicated");
  expect_detected(good.substr(0, table.offset) + good.substr(table.offset + table.size),
                  "chunk table removed");

  // Swap the whole cpu and gpu streams (chunks and tables; identical shapes).
  uint64_t s0 = find(chunk, 0, 0).offset, s1 = find(chunk, 1, 0).offset, s2 = find(chunk, 2, 0).offset;
  expect_detected(good.substr(0, s0) + good.substr(s1, s2 - s1) + good.substr(s0, s1 - s0) + good.substr(s2),
                  "streams cpu and gpu swapped");
  // Swap a chunk between the two streams at the same index.
  const Record& g4 = find(chunk, 1, 4);
  const Record& c4 = find(chunk, 0, 4);
  m = good;
  m.replace(c4.offset, c4.size, record_bytes(good, g4));
  m.replace(g4.offset, g4.size, record_bytes(good, c4));
  expect_detected(m, "chunk 4 swapped between streams");

  const Record& manifest = find(uint32_t(bundle::RecordType::kManifest));
  const Record& sig = find(uint32_t(bundle::RecordType::kSignature));
  const Record& custody = find(uint32_t(bundle::RecordType::kCustody));
  expect_detected(good.substr(0, manifest.offset) + record_bytes(good, sig) + record_bytes(good, manifest) +
                      good.substr(sig.offset + sig.size),
                  "manifest and signature swapped");
  expect_detected(good.substr(0, sig.offset) + good.substr(sig.offset + sig.size), "signature removed");
  expect_detected(good.substr(0, custody.offset) + good.substr(custody.offset + custody.size),
                  "custody log removed");
}

TEST_F(TamperCampaign, SplicesBetweenTwoBundles) {
  auto recs_b = records_of(other);
  ASSERT_EQ(recs_b.size(), recs.size());
  // Every single record (and the header) replaced by its counterpart from the other bundle.
  expect_detected(other.substr(0, bundle::kFileHeaderSize) + good.substr(bundle::kFileHeaderSize),
                  "file header from the other bundle");
  for (size_t i = 0; i < recs.size(); ++i) {
    ASSERT_EQ(recs[i].size, recs_b[i].size);
    std::string m = good;
    m.replace(recs[i].offset, recs[i].size, record_bytes(other, recs_b[i]));
    if (m == good) continue;  // identical records (e.g. END at the same offset)
    expect_detected(m, "record " + std::to_string(i) + " (" + bundle::record_type_name(recs[i].type) +
                           ") from the other bundle");
  }
  // Whole streams, and manifest + signature + custody together.
  uint64_t s0 = find(uint32_t(bundle::RecordType::kChunk), 0, 0).offset;
  uint64_t s1 = find(uint32_t(bundle::RecordType::kChunk), 1, 0).offset;
  std::string m = good;
  m.replace(s0, s1 - s0, other.substr(s0, s1 - s0));
  expect_detected(m, "stream cpu (chunks and table) from the other bundle");
  const Record& manifest = find(uint32_t(bundle::RecordType::kManifest));
  m = good.substr(0, manifest.offset) + other.substr(manifest.offset);
  expect_detected(m, "manifest, signature, custody log and end from the other bundle");
  m = other.substr(0, manifest.offset) + good.substr(manifest.offset);
  expect_detected(m, "all streams from the other bundle");
}

// Rebuilds `good` with a different manifest signed by `signer`, keeping everything else.
std::string resign(const std::string& good, const std::vector<Record>& recs,
                   const bundle::Manifest& m, const crypto::SigningKey& signer,
                   const std::string& custody_override = "") {
  std::string manifest_bytes = m.serialize();
  Bytes sig = *signer.sign(bundle::manifest_signing_message(manifest_bytes));
  uint64_t manifest_off = 0;
  std::string custody;
  for (const auto& r : recs) {
    if (r.type == uint32_t(bundle::RecordType::kManifest)) manifest_off = r.offset;
    if (r.type == uint32_t(bundle::RecordType::kCustody))
      custody = good.substr(r.offset + kRecordHeaderSize, r.size - kRecordHeaderSize);
  }
  if (!custody_override.empty()) custody = custody_override;
  std::string out = good.substr(0, manifest_off);
  auto add = [&](bundle::RecordType t, std::string_view payload) {
    auto h = bundle::encode_record_header({uint32_t(t), 0, payload.size(), bundle::kNoStream, 0});
    out.append(reinterpret_cast<const char*>(h.data()), h.size());
    out.append(payload);
  };
  add(bundle::RecordType::kManifest, manifest_bytes);
  add(bundle::RecordType::kSignature, as_chars(sig));
  add(bundle::RecordType::kCustody, custody);
  uint8_t end[8];
  store_le<uint64_t>(end, out.size());
  add(bundle::RecordType::kEnd, std::string_view(reinterpret_cast<char*>(end), 8));
  return out;
}

TEST_F(TamperCampaign, ResignedManifests) {
  auto reader = bundle::BundleReader::open(dir / "a.mlfx");
  ASSERT_TRUE(reader);
  // Sanity: rebuilding with the genuine manifest and device key gives an intact bundle.
  ASSERT_EQ(resign(good, recs, reader->manifest(), *keys.device.signing), good);

  // The real device key was stolen? No: an attacker edits the note and re-signs with a key of
  // their own. The signature is valid, but the custody chain is the real device's.
  crypto::SigningKey mallory = *crypto::SigningKey::generate();
  bundle::Manifest m = reader->manifest();
  m.note = "nothing to see";
  m.device.public_key = mallory.public_key().raw();
  m.device.key_fingerprint = mallory.public_key().fingerprint();
  expect_detected(resign(good, recs, m, mallory), "manifest edited and re-signed by another key");

  // A complete forgery (custody log re-signed too) verifies on its own terms; only the
  // trust store can tell, and it does.
  custody::CustodyLog log(m.bundle_id_hex());
  custody::Actor actor{"device", "x", "x", "x"};
  ASSERT_TRUE(log.append("acquired", actor, mallory, {}, {}));
  ASSERT_TRUE(log.append("sealed", actor, mallory, {},
                         {{"manifest_sha256", crypto::sha256_hex(as_bytes(m.serialize()))}}));
  std::string forged = resign(good, recs, m, mallory, log.serialize());
  testing::write_file(dir / "forged.mlfx", forged);
  EXPECT_TRUE(evidence::verify_bundle(dir / "forged.mlfx", {"", false}).intact());
  testing::fs::create_directory(dir / "trusted");
  // <device-id>.pub: the fixture's bundles name this host as their device.
  testing::write_file(dir / ("trusted/" + local_host_identity().hostname + ".pub"), keys.device.signing->public_key().pem());
  auto report = evidence::verify_bundle(dir / "forged.mlfx", {dir / "trusted", false});
  EXPECT_FALSE(report.intact());
  EXPECT_EQ(report.lines.back().check, "device");
  EXPECT_NE(report.lines.back().detail.find("not among the 1 trusted keys"), std::string::npos);
  EXPECT_FALSE(evidence::open_bundle(dir / "forged.mlfx", keys.lab, dir / "o", {dir / "trusted", false}));
  EXPECT_FALSE(testing::fs::exists(dir / "o"));
  // ... while the genuine bundle passes the same trust store.
  const auto genuine = evidence::verify_bundle(dir / "a.mlfx", {dir / "trusted", false});
  EXPECT_TRUE(genuine.intact());
  EXPECT_EQ(genuine.verdict(), evidence::Verdict::kAttributed);
}

}  // namespace
}  // namespace mlfx
