// LimeLayer over images built here byte by byte from LiME's documented format ("Memory Range
// Header Version 1": u32 magic 0x4C694D45, u32 version 1, u64 start, u64 inclusive end,
// 8 reserved bytes, little-endian), good and hostile.
#include "layers/lime_layer.h"

#include <gtest/gtest.h>

#include "layers/file_layer.h"
#include "test_util.h"

namespace mlfx::layers {
namespace {

// One range: its header (written out field by field) and `bytes` as its contents.
std::string range(uint64_t start, uint64_t end, const std::string& bytes, uint32_t magic = 0x4C694D45,
                  uint32_t version = 1) {
  std::string h;
  auto put = [&h](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) h.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put(magic, 4), put(version, 4), put(start, 8), put(end, 8), put(0, 8);
  return h + bytes;
}

class Lime : public ::testing::Test {
 protected:
  Result<std::unique_ptr<LimeLayer>> open(const std::string& image) {
    const std::string path = dir / ("image" + std::to_string(n_++));
    testing::write_file(path, image);
    auto f = FileLayer::open(path);
    if (!f) return fail(std::move(f).error());
    return LimeLayer::open(std::shared_ptr<const Layer>(std::move(*f)));
  }
  // The error's text for a refused image (empty when it was accepted).
  std::string refusal(const std::string& image) {
    auto l = open(image);
    return l ? std::string() : l.error().to_string();
  }
  testing::TempDir dir;
  int n_ = 0;
};

TEST_F(Lime, RangesMapTheirPhysicalAddressesAndGapsStayUnmapped) {
  const std::string a(0x1000, 'a'), b = "0123456789";
  auto l = open(range(0x1000, 0x1fff, a) + range(0x100000, 0x100009, b));
  ASSERT_TRUE(l) << l.error().to_string();
  ASSERT_EQ((*l)->segments().size(), 2u);
  EXPECT_EQ((*l)->segments()[1].base_offset, 32u + 0x1000 + 32);
  char got[4];
  ASSERT_TRUE((*l)->read(0x100003, got, 4));
  EXPECT_EQ(std::string(got, 4), "3456");
  EXPECT_EQ((*l)->mapped_run(0x1ff0, 0x100), 0x10u);
  EXPECT_FALSE((*l)->is_mapped(0x2000, 1));        // between the ranges: not in the image, not zeros
  EXPECT_FALSE((*l)->is_mapped(0x10000a, 1));      // past the inclusive end
  EXPECT_TRUE((*l)->file_place(0x100000, 10));     // bulk copies read the file
  EXPECT_TRUE(LimeLayer::probe(**FileLayer::open(dir / "image0")));
}

TEST_F(Lime, HostileHeadersAreRefusedSayingWhere) {
  const std::string page(16, 'x');
  struct Case {
    std::string image, says;
  };
  const Case cases[] = {
      {"", "empty"},
      {std::string(64, 'z'), "not a LiME image"},
      {range(0x1000, 0x100f, page) + range(0x2000, 0x200f, page, 0x12345678), "file offset 0x30"},
      {range(0x1000, 0x100f, page, 0x4C694D45, 2), "version 2"},
      {range(0x2000, 0x1fff, page), "ends before it starts"},
      {range(0, UINT64_MAX, page), "whole address space"},
      {range(0x1000, 0x1fff, page), "past the end of the image (truncated?)"},
      {range(0x1000, 0x100f, page) + range(0x2000, 0x200f, page).substr(0, 20), "cut short"},
      {range(0x2000, 0x200f, page) + range(0x1000, 0x100f, page), "unsorted or overlap"},
      {range(0x1000, 0x100f, page) + range(0x1008, 0x1017, page), "address 0x1008"},
      {range(0x1000, 0x100f, page) + range(0x1000, 0x100f, page), "unsorted or overlap"},
  };
  for (const Case& c : cases) {
    const std::string why = refusal(c.image);
    EXPECT_NE(why.find(c.says), std::string::npos) << "wanted '" << c.says << "', got '" << why << "'";
  }
}

TEST_F(Lime, AdjacentRangesAndReservedBytesAreAccepted) {
  std::string second = range(0x1010, 0x101f, std::string(16, 'b'));
  second[24] = 7;  // reserved: not checked, as Volatility does not
  auto l = open(range(0x1000, 0x100f, std::string(16, 'a')) + second);
  ASSERT_TRUE(l) << l.error().to_string();
  char got[2];
  ASSERT_TRUE((*l)->read(0x100f, got, 2));  // across the two ranges
  EXPECT_EQ(std::string(got, 2), "ab");
}

}  // namespace
}  // namespace mlfx::layers
