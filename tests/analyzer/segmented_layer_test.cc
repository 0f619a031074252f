// SegmentedLayer over a FileLayer: refused segment tables say where, in hex, as data; reads
// through the segments say where the bytes lie in the file (file_place) for bulk copies.
#include "layers/segmented_layer.h"

#include <gtest/gtest.h>

#include "layers/file_layer.h"
#include "test_util.h"

namespace mlfx::layers {
namespace {

class Segments : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string bytes(8192, 'a');
    bytes.replace(4096, 5, "hello");
    testing::write_file(dir / "image", bytes);
    auto f = FileLayer::open(dir / "image");
    ASSERT_TRUE(f);
    file = std::move(*f);
  }
  testing::TempDir dir;
  std::shared_ptr<const Layer> file;
};

TEST_F(Segments, RefusedTablesSayWhereInHex) {
  auto overlap = SegmentedLayer::create("core", file, {{0x7f0000001000, 0x100, 0}, {0x7f0000001080, 0x100, 0}});
  ASSERT_FALSE(overlap);
  ASSERT_TRUE(overlap.error().location());
  EXPECT_EQ(overlap.error().location()->address, 0x7f0000001080u);
  EXPECT_NE(overlap.error().to_string().find("address 0x7f0000001080"), std::string::npos) << overlap.error().to_string();

  auto beyond = SegmentedLayer::create("core", file, {{0x1000, 0x100, 8190}});
  ASSERT_FALSE(beyond);
  EXPECT_EQ(beyond.error().location()->file_offset, 8190u);
  EXPECT_NE(beyond.error().to_string().find("truncated?"), std::string::npos);
  EXPECT_NE(beyond.error().to_string().find("file offset 0x1ffe"), std::string::npos) << beyond.error().to_string();

  auto wraps = SegmentedLayer::create("core", file, {{UINT64_MAX - 0x10, 0x100, 0}});
  ASSERT_FALSE(wraps);
  EXPECT_NE(wraps.error().to_string().find("wraps around"), std::string::npos);
}

TEST_F(Segments, FilePlaceFollowsTheSegmentsAndStopsAtTheirEdges) {
  auto l = SegmentedLayer::create("core", file, {{0x10000, 0x1000, 0x1000}, {0x11000, 0x1000, 0}});
  ASSERT_TRUE(l);
  auto place = (*l)->file_place(0x10000, 5);
  ASSERT_TRUE(place);
  EXPECT_EQ(place->offset, 0x1000u);
  uint8_t got[5];
  ASSERT_EQ(pread(place->fd, got, 5, static_cast<off_t>(place->offset)), 5);
  EXPECT_EQ(std::string(got, got + 5), "hello");
  auto last = (*l)->file_place(0x10fe0, 0x20);  // the end of the first segment
  ASSERT_TRUE(last);
  EXPECT_EQ(last->offset, 0x1fe0u);
  EXPECT_FALSE((*l)->file_place(0x10ff0, 0x20));  // across two segments: not one run of the file
  EXPECT_FALSE((*l)->file_place(0x20000, 1));     // unmapped
}

TEST_F(Segments, AnUnterminatedStringNamesWhereItStarts) {
  auto l = SegmentedLayer::create("core", file, {{0x10000, 0x1000, 0}});
  ASSERT_TRUE(l);
  auto s = (*l)->read_cstring(0x10010, 64);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().to_string().find("address 0x10010"), std::string::npos) << s.error().to_string();
}

}  // namespace
}  // namespace mlfx::layers
