#include <gtest/gtest.h>

#include <random>

#include "exporters/tensor_record.h"
#include "mlfx/base/file.h"
#include "sample_tensors.h"
#include "test_util.h"

namespace mlfx::exporters {
namespace {

using testing::reference_bytes;
using testing::Sample;

TEST(DtypeTable, MatchesC10Numbering) {
  auto table = dtype_table();
  ASSERT_EQ(table.size(), 47u);
  for (size_t i = 0; i < table.size(); ++i) EXPECT_EQ(table[i].scalar_type, int(i));
  struct Want {
    int n;
    const char* c10;
    uint32_t size;
    const char* st;
    const char* storage;
  };
  // §3.6 of the layout reference, and the names of both formats.
  for (const Want& w : std::initializer_list<Want>{
           {0, "Byte", 1, "U8", "ByteStorage"},
           {1, "Char", 1, "I8", "CharStorage"},
           {2, "Short", 2, "I16", "ShortStorage"},
           {3, "Int", 4, "I32", "IntStorage"},
           {4, "Long", 8, "I64", "LongStorage"},
           {5, "Half", 2, "F16", "HalfStorage"},
           {6, "Float", 4, "F32", "FloatStorage"},
           {7, "Double", 8, "F64", "DoubleStorage"},
           {8, "ComplexHalf", 4, "", ""},
           {9, "ComplexFloat", 8, "C64", "ComplexFloatStorage"},
           {10, "ComplexDouble", 16, "", "ComplexDoubleStorage"},
           {11, "Bool", 1, "BOOL", "BoolStorage"},
           {12, "QInt8", 1, "", "QInt8Storage"},
           {14, "QInt32", 4, "", "QInt32Storage"},
           {15, "BFloat16", 2, "BF16", "BFloat16Storage"},
           {22, "Bits16", 2, "", ""},
           {23, "Float8_e5m2", 1, "F8_E5M2", ""},
           {24, "Float8_e4m3fn", 1, "F8_E4M3", ""},
           {27, "UInt16", 2, "U16", ""},
           {29, "UInt64", 8, "U64", ""},
           {43, "Int7", 1, "", ""},
           {44, "Float8_e8m0fnu", 1, "F8_E8M0", ""},
       }) {
    const DtypeInfo* d = find_dtype(w.n);
    ASSERT_NE(d, nullptr) << w.n;
    EXPECT_EQ(d->c10_name, w.c10) << w.n;
    EXPECT_EQ(d->item_size, w.size) << w.n;
    EXPECT_EQ(d->safetensors_name, w.st) << w.n;
    EXPECT_EQ(d->storage_class, w.storage) << w.n;
  }
  EXPECT_TRUE(find_dtype(kQUInt8)->quantized);
  EXPECT_FALSE(find_dtype(kFloat)->quantized);
  EXPECT_EQ(find_dtype(-1), nullptr);
  EXPECT_EQ(find_dtype(47), nullptr);
}

// Materialises `t` through the library and compares with the element-by-element reference.
void expect_matches_reference(const TensorRecord& t) {
  auto got = contiguous_bytes(t, 1 << 30);
  ASSERT_TRUE(got) << got.error().to_string();
  EXPECT_EQ(*got, reference_bytes(t)) << t.key;
}

TEST(Contiguous, EverySampleLayout) {
  Sample s = testing::make_full_sample();
  for (const TensorRecord& t : s.tensors()) expect_matches_reference(t);
}

TEST(Contiguous, TransposedOffsetAndZeroStride) {
  Sample s;
  size_t st = s.add_storage({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15});
  // Transpose of the row-major 2x3 [[0,1,2],[3,4,5]].
  auto t = contiguous_bytes(s.add("t", kByte, {3, 2}, {1, 3}, 0, st), 100);
  EXPECT_EQ(*t, (Bytes{0, 3, 1, 4, 2, 5}));
  // Rows 1..2, columns 1..2 of a 4x4.
  auto o = contiguous_bytes(s.add("o", kByte, {2, 2}, {4, 1}, 5, st), 100);
  EXPECT_EQ(*o, (Bytes{5, 6, 9, 10}));
  // Expanded rows and a fully broadcast scalar.
  auto e = contiguous_bytes(s.add("e", kByte, {3, 2}, {0, 1}, 14, st), 100);
  EXPECT_EQ(*e, (Bytes{14, 15, 14, 15, 14, 15}));
  auto b = contiguous_bytes(s.add("b", kByte, {2, 2}, {0, 0}, 7, st), 100);
  EXPECT_EQ(*b, (Bytes{7, 7, 7, 7}));
  // 0-d, size-1 dims with arbitrary strides, and empty tensors anywhere.
  EXPECT_EQ(*contiguous_bytes(s.add("s", kShort, {}, {}, 3, st), 100), (Bytes{6, 7}));
  EXPECT_EQ(*contiguous_bytes(s.add("one", kByte, {1, 3, 1}, {999, 2, 12345}, 1, st), 100),
            (Bytes{1, 3, 5}));
  EXPECT_EQ(contiguous_bytes(s.add("z", kFloat, {4, 0}, {1, 1}, 1 << 20, st), 100)->size(), 0u);
}

TEST(Contiguous, RandomLayoutsMatchReference) {
  std::mt19937_64 rng(1234);
  Sample s;
  size_t st = s.add_random_storage(4096);
  for (int i = 0; i < 2000; ++i) {
    const int type = std::vector<int>{kByte, kHalf, kFloat, kDouble, kComplexDouble}[rng() % 5];
    const int64_t item = find_dtype(type)->item_size;
    const size_t rank = rng() % 5;
    std::vector<int64_t> shape(rank), strides(rank);
    for (size_t d = 0; d < rank; ++d) {
      shape[d] = static_cast<int64_t>(rng() % 5);
      strides[d] = static_cast<int64_t>(rng() % 4 == 0 ? 0 : rng() % 20);
    }
    if (rng() % 3 == 0) strides = testing::contiguous_strides(shape);
    int64_t extent = 0;
    bool empty = false;
    for (size_t d = 0; d < rank; ++d) {
      if (shape[d] == 0) empty = true;
      extent += (shape[d] - 1) * strides[d];
    }
    const int64_t capacity = 4096 / item;
    if (!empty && extent + 1 > capacity) continue;
    const int64_t offset = empty ? 0 : static_cast<int64_t>(rng() % uint64_t(capacity - extent));
    TensorRecord& t = s.add("r" + std::to_string(i), type, shape, strides, offset, st);
    expect_matches_reference(t);
  }
}

TEST(Contiguous, LargeContiguousRunsAreSpansOfTheStorage) {
  Sample s;
  size_t st = s.add_random_storage(3 << 20);
  const TensorRecord& t = s.add("big", kFloat, {3, 1 << 18}, {1 << 18, 1}, 0, st);
  std::vector<ByteView> pieces;
  ASSERT_TRUE(for_each_contiguous_piece(t, [&](ByteView p) -> Status {
    pieces.push_back(p);
    return {};
  }));
  ASSERT_EQ(pieces.size(), 1u);  // rows merged into one run, handed over without a copy
  EXPECT_EQ(pieces[0].data(), s.storage(st).data());
  EXPECT_EQ(pieces[0].size(), size_t(3) << 20);
}

TEST(Contiguous, SinkErrorStopsTheWalk) {
  Sample s;
  size_t st = s.add_random_storage(1 << 16);
  const TensorRecord& t = s.add("col", kByte, {256, 256}, {1, 256}, 0, st);
  int calls = 0;
  auto r = for_each_contiguous_piece(t, [&](ByteView) -> Status {
    ++calls;
    return fail(Errc::kIo, "disk full");
  });
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "disk full");
  EXPECT_EQ(calls, 1);
}

// Metadata as hostile memory could give it: each must be an error, never a read past the end.
TEST(Validate, RejectsHostileMetadata) {
  Sample s;
  size_t st = s.add_random_storage(64);
  auto expect_bad = [&](TensorRecord t, Errc code, const std::string& needle) {
    auto v = validate(t);
    ASSERT_FALSE(v) << needle;
    EXPECT_EQ(v.error().code(), code) << v.error().to_string();
    EXPECT_NE(v.error().to_string().find(needle), std::string::npos) << v.error().to_string();
    EXPECT_FALSE(contiguous_bytes(t, 1 << 20));
    EXPECT_FALSE(for_each_contiguous_piece(t, [](ByteView) -> Status { return {}; }));
  };
  TensorRecord ok = s.add("x", kFloat, {4, 4}, {4, 1}, 0, st);
  ASSERT_TRUE(validate(ok));

  TensorRecord t = ok;
  t.storage_offset = 1;  // last element one past the end
  expect_bad(t, Errc::kBadFormat, "past the end");
  t = ok;
  t.strides = {5, 1};
  expect_bad(t, Errc::kBadFormat, "past the end");
  t = ok;
  t.strides = {INT64_MAX / 4, 1};
  expect_bad(t, Errc::kBadFormat, "past the end");
  t = ok;
  t.shape = {INT64_MAX, 2};
  t.strides = {INT64_MAX, INT64_MAX};
  expect_bad(t, Errc::kBadFormat, "overflows");
  t = ok;
  t.shape = {2, 2, 2, 2, 2, 2, 2, 2};
  t.strides.assign(8, INT64_MAX);
  expect_bad(t, Errc::kBadFormat, "beyond 2^64");
  t = ok;
  t.storage_offset = INT64_MAX;
  expect_bad(t, Errc::kBadFormat, "past the end");
  t = ok;
  t.shape = {-1, 4};
  expect_bad(t, Errc::kBadFormat, "negative size");
  t = ok;
  t.strides = {-4, 1};
  expect_bad(t, Errc::kBadFormat, "negative stride");
  t = ok;
  t.storage_offset = -1;
  expect_bad(t, Errc::kBadFormat, "negative storage offset");
  t = ok;
  t.strides = {4};
  expect_bad(t, Errc::kBadFormat, "2 sizes but 1 strides");
  t = ok;
  t.shape.assign(65, 1);
  t.strides.assign(65, 1);
  expect_bad(t, Errc::kBadFormat, "rank 65");
  t = ok;
  t.scalar_type = 99;
  expect_bad(t, Errc::kUnsupported, "unknown c10::ScalarType 99");
  t = ok;
  t.storage.size_bytes = 1 << 20;  // declared larger than what was recovered
  expect_bad(t, Errc::kInvalidArgument, "are available");
  t = ok;
  t.key = std::string("bad\xff", 4);
  expect_bad(t, Errc::kBadFormat, "UTF-8");
  t = ok;
  t.scalar_type = kComplexDouble;  // 16 bytes per element: 4x4 needs 256 bytes
  expect_bad(t, Errc::kBadFormat, "past the end");
}

TEST(Validate, HugeBroadcastIsRefusedBeforeAllocating) {
  Sample s;
  size_t st = s.add_random_storage(4);
  TensorRecord t = s.add("bcast", kFloat, {int64_t(1) << 40}, {0}, 0, st);
  ASSERT_TRUE(validate(t));  // legal: one element seen 2^40 times
  EXPECT_EQ(*contiguous_size(t), uint64_t(4) << 40);
  auto r = contiguous_bytes(t, 1 << 20);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
}

// Bytes with a place in a file come from the file (never from the view, which may be a
// mapping not yet faulted in), in bounded pieces, and a file that ends early is an error.
TEST(StreamBytes, ReadsFromTheFilePlaceInPieces) {
  mlfx::testing::TempDir dir;
  std::string text(3u << 20, 'f');
  text[5] = 'X';
  text[(2u << 20) + 7] = 'Y';
  mlfx::testing::write_file(dir / "evidence", text);
  auto f = File::open_read(dir / "evidence");
  ASSERT_TRUE(f);
  const Bytes decoy((2u << 20) + 100, 0);  // what the view holds: must not be what is streamed
  std::string got;
  size_t pieces = 0, largest = 0;
  auto sink = [&](ByteView p) -> Status {
    got.append(reinterpret_cast<const char*>(p.data()), p.size());
    ++pieces, largest = std::max(largest, p.size());
    return {};
  };
  SourceBytes src(ByteView(decoy), FilePlace{f->fd(), 0});
  ASSERT_TRUE(stream_bytes(src.subspan(5, decoy.size() - 5), sink));
  EXPECT_EQ(got, text.substr(5, decoy.size() - 5));
  EXPECT_EQ(pieces, 3u);
  EXPECT_LE(largest, size_t{1} << 20);

  got.clear();  // without a place: the view itself, in one piece
  ASSERT_TRUE(stream_bytes(SourceBytes(ByteView(decoy).first(10)), sink));
  EXPECT_EQ(got, std::string(10, '\0'));

  const Bytes past(100, 0);  // a place beyond the end of the file
  auto st = stream_bytes(SourceBytes(ByteView(past), FilePlace{f->fd(), text.size() - 10}), sink);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().to_string().find("ends early"), std::string::npos) << st.error().to_string();
}

TEST(Utf8, Validation) {
  EXPECT_TRUE(is_valid_utf8("layer.0.weight"));
  EXPECT_TRUE(is_valid_utf8("gewicht.\xc3\xa4.\xe2\x82\xac.\xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));          // truncated
}

}  // namespace
}  // namespace mlfx::exporters
