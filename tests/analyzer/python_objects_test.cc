// ObjectReader over hostile sizes: a tuple, list, set, dict or str that claims millions of
// items in a small image fails without allocating for them (the items must be readable
// before a buffer is sized), and honest objects still read.
#include "frontends/cpython/python_objects.h"

#include <atomic>
#include <cstdlib>
#include <new>

#include <gtest/gtest.h>

#include "layers/segmented_layer.h"
#include "synthetic_image.h"

// The largest single allocation since the last reset: what a hostile size made us reserve.
// (Not inlined: GCC would pair an inlined free() with the caller's `new` and warn.)
static std::atomic<size_t> g_largest{0};

__attribute__((noinline)) void* operator new(size_t n) {
  size_t seen = g_largest.load(std::memory_order_relaxed);
  while (n > seen && !g_largest.compare_exchange_weak(seen, n, std::memory_order_relaxed)) {
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  std::abort();
}
__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
__attribute__((noinline)) void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace mlfx::frontends::cpython {
namespace {

using fuzz::Blob;
using fuzz::PyHeap;

constexpr uint64_t kItems = kMaxItems - 1;  // just under the readers' plausibility limit
constexpr size_t kSmall = 1 << 20;           // no allocation for a hostile size may reach this

class HostileSizes : public ::testing::Test {
 protected:
  HostileSizes() : py(blob) {}

  void map() {
    blob.bytes.resize((blob.bytes.size() + 15) / 16 * 16);
    auto base = std::make_shared<fuzz::MemoryLayer>(blob.bytes);
    auto seg = layers::SegmentedLayer::create("image", base, {{blob.base, blob.bytes.size(), 0}});
    ASSERT_TRUE(seg);
    mem = std::move(*seg);
    reader = std::make_unique<ObjectReader>(*mem, *layout_for(0x030B0200), diag);
    g_largest = 0;
  }

  Blob blob{0x10000};
  PyHeap py;
  Diagnostics diag;
  std::unique_ptr<layers::Layer> mem;
  std::unique_ptr<ObjectReader> reader;
};

TEST_F(HostileSizes, HonestObjectsStillRead) {
  const uint64_t s = py.str("hello"), t = py.tuple({s, py.none}), l = py.list({s, s, s}), st = py.set({s}),
                 d = py.dict({{s, t}}), sd = py.split_dict({{py.str("x"), s}, {py.str("y"), t}});
  map();
  EXPECT_EQ(reader->str(s).value_or("?"), "hello");
  EXPECT_EQ(reader->tuple_items(t).value_or(std::vector<uint64_t>{}).size(), 2u);
  EXPECT_EQ(reader->list_items(l).value_or(std::vector<uint64_t>{}).size(), 3u);
  EXPECT_EQ(reader->set_items(st).value_or(std::vector<uint64_t>{}).size(), 1u);
  EXPECT_EQ(reader->dict_items(d).value_or(Items{}).size(), 1u);
  auto split = reader->str_dict(sd);
  ASSERT_TRUE(split) << split.error().to_string();
  EXPECT_EQ(split->size(), 2u);
}

TEST_F(HostileSizes, TupleListSetDictAndStrCostNoMemory) {
  const uint64_t tuple = py.tuple({py.none});
  blob.put64(tuple + 16, kItems);
  const uint64_t list = py.list({py.none});
  blob.put64(list + 16, kItems);
  const uint64_t set = py.set({py.none});
  blob.put64(set + 32, kMaxItems - 1);  // mask: 1M slots of 16 bytes
  const uint64_t dict = py.dict({{py.str("k"), py.none}});
  uint64_t keys;
  std::memcpy(&keys, blob.at(dict + 32), 8);
  blob.put8(keys + 8, 20);         // log2_size
  blob.put64(keys + 24, kItems);  // nentries
  const uint64_t str = py.str("short");
  blob.put64(str + 16, kItems);  // length
  map();

  auto t = reader->tuple_items(tuple);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().to_string().find("are not all mapped"), std::string::npos) << t.error().to_string();
  // Where, as data: the layer and the first address of the range, printed in hex.
  ASSERT_TRUE(t.error().location());
  EXPECT_TRUE(t.error().location()->address.has_value());
  EXPECT_NE(t.error().to_string().find("(layer "), std::string::npos) << t.error().to_string();
  EXPECT_NE(t.error().to_string().find(", address 0x"), std::string::npos) << t.error().to_string();
  EXPECT_FALSE(reader->list_items(list));
  EXPECT_FALSE(reader->set_items(set));
  EXPECT_FALSE(reader->dict_items(dict));
  EXPECT_FALSE(reader->str(str));
  EXPECT_FALSE(reader->plain_value(tuple).value_or(std::nullopt));
  EXPECT_LT(g_largest.load(), kSmall) << "a hostile size was allocated for";
}

// Issue 11: dict keys that all alias one long str cost its bytes once (decoded once, names are
// views of the cache); a name over the cap is refused with a diagnostic, before any copy.
TEST_F(HostileSizes, AliasedKeysDecodedOnceAndLongNamesRefused) {
  const uint64_t name = py.str(std::string(3000, 'k')), huge = py.str(std::string(kMaxNameBytes + 1, 'h'));
  std::vector<std::pair<uint64_t, uint64_t>> items(500, {name, py.none});
  items.push_back({huge, py.none});
  const uint64_t dict = py.dict(items);
  map();
  auto named = reader->str_dict(dict);
  ASSERT_TRUE(named) << named.error().to_string();
  ASSERT_EQ(named->size(), 500u);
  for (const auto& [n, v] : *named) EXPECT_EQ(n.data(), named->front().first.data()) << "a name was copied";
  EXPECT_LT(g_largest.load(), kSmall);
  EXPECT_LT(diag.spent(), 64u * 1024) << "the aliased key was charged more than once";
  ASSERT_EQ(diag.warnings().size(), 1u);
  EXPECT_NE(diag.warnings()[0].find("over the cap of 4096"), std::string::npos) << diag.warnings()[0];
  EXPECT_FALSE(reader->str_view(huge));
  EXPECT_TRUE(reader->str_view(huge, kMaxStrBytes));
}

}  // namespace
}  // namespace mlfx::frontends::cpython
