#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>

#include <nlohmann/json.hpp>

#include "exporters/safetensors_writer.h"
#include "sample_tensors.h"

namespace mlfx::exporters {
namespace {

using mlfx::testing::TempDir;
using testing::Sample;

std::string padded(std::string s) {
  s.append((8 - s.size() % 8) % 8, ' ');
  return s;
}

TEST(SafetensorsHeader, ExactText) {
  Sample s;
  size_t a = s.add_random_storage(24);
  size_t b = s.add_storage({1});
  s.add("a", kFloat, {2, 3}, {3, 1}, 0, a);
  s.add("b", kBool, {}, {}, 0, b);
  s.add("c", kBFloat16, {0, 5}, {5, 1}, 0, b);
  auto h = safetensors_header(s.tensors(), {{"format", "pt"}, {"case", "A-17"}});
  ASSERT_TRUE(h) << h.error().to_string();
  EXPECT_EQ(*h, padded(R"({"__metadata__":{"case":"A-17","format":"pt"},)"
                       R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                       R"("b":{"dtype":"BOOL","shape":[],"data_offsets":[24,25]},)"
                       R"("c":{"dtype":"BF16","shape":[0,5],"data_offsets":[25,25]}})"));
  EXPECT_EQ(h->size() % 8, 0u);
  auto bare = safetensors_header(std::span(s.tensors()).first(1), {});
  EXPECT_EQ(*bare, padded(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})"));
  EXPECT_EQ(*safetensors_header({}, {}), "{}      ");
}

TEST(SafetensorsHeader, EscapesKeysAndKeepsUtf8) {
  Sample s;
  size_t a = s.add_storage({1});
  s.add("q\"b\\s\n\x01.\xc3\xa4", kByte, {1}, {1}, 0, a);
  auto h = safetensors_header(s.tensors(), {{"k", "v\"\t"}});
  ASSERT_TRUE(h);
  auto j = nlohmann::json::parse(*h);
  EXPECT_EQ(j["__metadata__"]["k"], "v\"\t");
  EXPECT_TRUE(j.contains("q\"b\\s\n\x01.\xc3\xa4"));
  EXPECT_NE(h->find(R"("q\"b\\s\u000a\u0001.)" "\xc3\xa4" R"(")"), std::string::npos) << *h;
}

TEST(SafetensorsHeader, RefusesWhatTheFormatCannotHold) {
  Sample s;
  size_t a = s.add_random_storage(64);
  s.add("x", kFloat, {2}, {1}, 0, a);
  auto refuse = [&](std::vector<TensorRecord> ts, Errc code, const std::string& needle) {
    auto h = safetensors_header(ts, {});
    ASSERT_FALSE(h) << needle;
    EXPECT_EQ(h.error().code(), code);
    EXPECT_NE(h.error().to_string().find(needle), std::string::npos) << h.error().to_string();
  };
  std::vector<TensorRecord> ts = s.tensors();
  ts.push_back(ts[0]);
  refuse(ts, Errc::kInvalidArgument, "duplicate tensor key 'x'");
  ts = s.tensors();
  ts[0].key = "__metadata__";
  refuse(ts, Errc::kInvalidArgument, "reserved");
  for (int type : {int(kComplexDouble), int(kQInt8), int(kComplexHalf), 25 /*fnuz*/}) {
    ts = s.tensors();
    ts[0].scalar_type = type;
    refuse(ts, Errc::kUnsupported, "no safetensors equivalent");
  }
  ts = s.tensors();
  ts[0].storage_offset = 15;
  refuse(ts, Errc::kBadFormat, "past the end");
  auto bad_meta = safetensors_header(s.tensors(), {{"k", "\xff"}});
  EXPECT_FALSE(bad_meta);
}

// Reads a safetensors file back in C++ (nlohmann's ordered_json keeps the header order).
struct ReadBack {
  nlohmann::ordered_json header;
  std::string data;
};
ReadBack read_back(const std::string& path) {
  std::string file = mlfx::testing::read_file(path);
  EXPECT_GE(file.size(), 8u);
  const uint64_t n = load_le<uint64_t>(reinterpret_cast<const uint8_t*>(file.data()));
  EXPECT_EQ(n % 8, 0u);
  EXPECT_LE(8 + n, file.size());
  ReadBack r;
  r.header = nlohmann::ordered_json::parse(file.substr(8, n));
  r.data = file.substr(8 + n);
  return r;
}

TEST(Safetensors, RoundTripEverySampleTensor) {
  TempDir dir;
  Sample s = testing::make_full_sample();
  std::vector<TensorRecord> ts = s.safetensors_subset();
  ASSERT_TRUE(write_safetensors(dir / "m.safetensors", ts, {{"format", "pt"}}));
  ReadBack r = read_back(dir / "m.safetensors");
  EXPECT_EQ(r.header["__metadata__"], (nlohmann::ordered_json{{"format", "pt"}}));
  r.header.erase("__metadata__");
  ASSERT_EQ(r.header.size(), ts.size());
  size_t i = 0, pos = 0;
  for (const auto& [key, entry] : r.header.items()) {
    const TensorRecord& t = ts[i++];
    EXPECT_EQ(key, t.key);
    EXPECT_EQ(entry["dtype"], find_dtype(t.scalar_type)->safetensors_name);
    EXPECT_EQ(entry["shape"].get<std::vector<int64_t>>(), t.shape);
    auto offs = entry["data_offsets"].get<std::vector<size_t>>();
    ASSERT_EQ(offs.size(), 2u);
    EXPECT_EQ(offs[0], pos) << key;
    Bytes want = testing::reference_bytes(t);
    ASSERT_EQ(offs[1] - offs[0], want.size()) << key;
    EXPECT_EQ(r.data.substr(offs[0], want.size()), std::string(want.begin(), want.end())) << key;
    pos = offs[1];
  }
  EXPECT_EQ(pos, r.data.size());
}

TEST(Safetensors, TiedWeightsAreWrittenTwice) {
  TempDir dir;
  Sample s;
  size_t st = s.add_random_storage(16);
  s.add("emb", kFloat, {4}, {1}, 0, st);
  s.add("head", kFloat, {4}, {1}, 0, st);
  ASSERT_TRUE(write_safetensors(dir / "t.safetensors", s.tensors(), {}));
  ReadBack r = read_back(dir / "t.safetensors");
  EXPECT_EQ(r.data.size(), 32u);
  EXPECT_EQ(r.data.substr(0, 16), r.data.substr(16, 16));
}

TEST(Safetensors, FailureLeavesNoFileAndNeverReplaces) {
  TempDir dir;
  Sample s;
  size_t st = s.add_random_storage(8);
  s.add("ok", kFloat, {2}, {1}, 0, st);
  s.add("bad", kComplexDouble, {1}, {1}, 0, s.add_random_storage(16));
  auto r = write_safetensors(dir / "x.safetensors", s.tensors(), {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("writing safetensors"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir / "x.safetensors"));

  mlfx::testing::write_file(dir / "y.safetensors", "keep");
  auto again = write_safetensors(dir / "y.safetensors", std::span(s.tensors()).first(1), {});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), Errc::kExists);
  EXPECT_EQ(mlfx::testing::read_file(dir / "y.safetensors"), "keep");
}

TEST(Safetensors, WriteErrorMidwayRemovesThePartialFile) {
  TempDir dir;
  Sample s;
  s.add_own("big", kFloat, {1 << 20});  // 4 MiB: past the 1 MiB file size limit below
  std::signal(SIGXFSZ, SIG_IGN);        // write() then fails with EFBIG instead
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  struct rlimit small = old;
  small.rlim_cur = 1 << 20;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  auto r = write_safetensors(dir / "p.safetensors", s.tensors(), {});
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kIo) << r.error().to_string();
  EXPECT_FALSE(std::filesystem::exists(dir / "p.safetensors"));
}

}  // namespace
}  // namespace mlfx::exporters
