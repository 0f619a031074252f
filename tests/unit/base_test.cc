#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "mlfx/base/bytes.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "mlfx/base/printable.h"
#include "mlfx/base/result.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/write_behind.h"
#include "test_util.h"

namespace mlfx {
namespace {

TEST(Bytes, HexRoundTripAndRejects) {
  Bytes b = {0x00, 0x01, 0xab, 0xff};
  EXPECT_EQ(to_hex(b), "0001abff");
  EXPECT_EQ(*from_hex("0001ABff"), b);
  EXPECT_FALSE(from_hex("abc"));
  EXPECT_FALSE(from_hex("zz"));
}

TEST(Bytes, Base64RoundTripAllLengths) {
  for (size_t n = 0; n < 40; ++n) {
    Bytes b(n);
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 37 + n);
    auto back = from_base64(to_base64(b));
    ASSERT_TRUE(back) << n;
    EXPECT_EQ(*back, b) << n;
  }
  EXPECT_FALSE(from_base64("abc"));
  EXPECT_FALSE(from_base64("ab!="));
}

TEST(Bytes, LittleEndian) {
  uint8_t buf[8];
  store_le<uint64_t>(buf, 0x0102030405060708ull);
  EXPECT_EQ(buf[0], 0x08);
  EXPECT_EQ(buf[7], 0x01);
  EXPECT_EQ(load_le<uint64_t>(buf), 0x0102030405060708ull);
  store_le<uint32_t>(buf, 0xdeadbeef);
  EXPECT_EQ(load_le<uint32_t>(buf), 0xdeadbeefu);
}

TEST(Bytes, ConstantTimeEqualAndSecretWipe) {
  EXPECT_TRUE(equal_ct(as_bytes("abc"), as_bytes("abc")));
  EXPECT_FALSE(equal_ct(as_bytes("abc"), as_bytes("abd")));
  EXPECT_FALSE(equal_ct(as_bytes("abc"), as_bytes("ab")));
  SecretBytes s(16);
  s.data()[0] = 7;
  SecretBytes t = std::move(s);
  EXPECT_EQ(t.size(), 16u);
  EXPECT_EQ(t.data()[0], 7);
}

TEST(Error, ContextChainPrintsOutermostFirst) {
  Error e = Error(Errc::kCorrupt, "authentication tag mismatch").context("stream cpu, chunk 17").context("x.mlfx");
  EXPECT_EQ(e.to_string(), "x.mlfx: stream cpu, chunk 17: authentication tag mismatch");
  EXPECT_EQ(e.code(), Errc::kCorrupt);
}

TEST(File, CreateNewRefusesToOverwrite) {
  testing::TempDir dir;
  ASSERT_TRUE(write_new_file(dir / "a", "one", 0600));
  auto again = write_new_file(dir / "a", "two", 0600);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), Errc::kExists);
  EXPECT_EQ(testing::read_file(dir / "a"), "one");
}

TEST(File, ReadsAndReportsShortFiles) {
  testing::TempDir dir;
  testing::write_file(dir / "f", "0123456789");
  auto f = File::open_read(dir / "f");
  ASSERT_TRUE(f);
  uint8_t buf[4];
  ASSERT_TRUE(f->pread_exact(6, buf, 4));
  EXPECT_EQ(std::string(buf, buf + 4), "6789");
  EXPECT_FALSE(f->pread_exact(8, buf, 4));
  EXPECT_FALSE(File::open_read(dir / "missing"));
  EXPECT_FALSE(File::open_read(dir.path()));  // a directory
  EXPECT_FALSE(read_small_file(dir / "f", 5));
}

// Descriptors of this process open on `path`.
int descriptors_on(const std::string& path) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec) == path) ++n;
  }
  return n;
}

TEST(WriteBehind, SyncsARegularFileOnADescriptorOfItsOwnWhileItIsWritten) {
  testing::TempDir dir;
  auto f = File::create_new(dir / "big", 0600);
  ASSERT_TRUE(f);
  WriteBehind wb;
  const Bytes block(4u << 20, 0x5a);
  uint64_t offset = 0;
  for (int i = 0; i < 33; ++i) {  // 132 MiB: one sync step and a bit
    ASSERT_TRUE(f->write_all(block));
    wb.wrote(f->fd(), offset, block.size());
    offset += block.size();
  }
  EXPECT_EQ(descriptors_on(dir / "big"), 2);  // the writer's and the syncer's
  EXPECT_TRUE(wb.stop());
  EXPECT_EQ(descriptors_on(dir / "big"), 1);
  EXPECT_TRUE(wb.stop());  // idempotent
  EXPECT_TRUE(f->sync());
}

TEST(WriteBehind, LeavesPipesAlone) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  WriteBehind wb;
  ASSERT_EQ(write(p[1], "x", 1), 1);
  wb.wrote(p[1], 0, 200u << 20);  // claims far more than a sync step
  EXPECT_TRUE(wb.stop());
  close(p[0]);
  close(p[1]);
}

TEST(Clock, UtcTimestampHasZone) {
  std::string t = utc_timestamp();
  ASSERT_EQ(t.size(), 27u) << t;
  EXPECT_EQ(t.back(), 'Z');
  EXPECT_EQ(t[10], 'T');
}

TEST(Json, HostileNestingIsRefusedNotRecursed) {
  // A million levels would overflow the stack in any recursive copy or dump.
  const size_t levels = 1000000;
  std::string deep = std::string(levels, '[') + std::string(levels, ']');
  auto r = json::parse(deep, "doc");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("nests deeper"), std::string::npos);
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  objects += "1" + std::string(100000, '}');
  EXPECT_FALSE(json::parse(objects, "doc"));
  std::string ok = std::string(json::kMaxDepth, '[') + std::string(json::kMaxDepth, ']');
  EXPECT_TRUE(json::parse(ok, "doc"));
}

TEST(Json, StrictGettersNameTheField) {
  auto j = json::parse(R"({"a":"x","n":5,"neg":-1,"h":"00ff"})", "doc");
  ASSERT_TRUE(j);
  EXPECT_EQ(*json::get_string(*j, "a", "doc"), "x");
  EXPECT_EQ(*json::get_uint(*j, "n", "doc"), 5u);
  auto neg = json::get_uint(*j, "neg", "doc");
  ASSERT_FALSE(neg);
  EXPECT_NE(neg.error().message().find("'neg'"), std::string::npos);
  EXPECT_FALSE(json::get_string(*j, "missing", "doc"));
  EXPECT_FALSE(json::get_hex(*j, "h", 3, "doc"));
  EXPECT_TRUE(json::get_hex(*j, "h", 2, "doc"));
  EXPECT_FALSE(json::parse("{", "doc"));
  EXPECT_EQ(json::canonical(*json::parse(R"({"b":1, "a":2})", "d")), R"({"a":2,"b":1})");
}

// Evidence names reach a terminal only as text that no terminal acts on (issue 11).
TEST(Printable, EscapesWhatATerminalActsOnAndKeepsText) {
  EXPECT_EQ(printable("plain name_1.weight"), "plain name_1.weight");
  EXPECT_EQ(printable("\x1b]0;title\x07"), "\\x1b]0;title\\x07");
  EXPECT_EQ(printable("a\nb\tc\rd"), "a\\nb\\tc\\rd");
  EXPECT_EQ(printable(std::string("nul\0x", 5)), "nul\\x00x");
  EXPECT_EQ(printable("\x7f"), "\\x7f");
  EXPECT_EQ(printable("\xc2\x9b" "31m"), "\\u{9b}31m") << "C1 CSI";
  EXPECT_EQ(printable("\xe2\x80\xae" "fdp.exe"), "\\u{202e}fdp.exe") << "right-to-left override";
  EXPECT_EQ(printable("\xe2\x81\xa6x"), "\\u{2066}x") << "isolate";
  EXPECT_EQ(printable("\xff\xc3"), "\\xff\\xc3") << "not UTF-8";
  EXPECT_EQ(printable("\xc0\xaf"), "\\xc0\\xaf") << "overlong";
  EXPECT_EQ(printable("\xed\xa0\x80"), "\\xed\\xa0\\x80") << "surrogate";
  EXPECT_EQ(printable("a\\x1b"), "a\\\\x1b") << "a backslash cannot fake an escape";
  EXPECT_EQ(printable("\xd0\x9c\xd0\xbe\xd0\xb4\xd0\xb5\xd0\xbb\xd1\x8c \xe6\xa8\xa1\xe5\x9e\x8b"),
            "\xd0\x9c\xd0\xbe\xd0\xb4\xd0\xb5\xd0\xbb\xd1\x8c \xe6\xa8\xa1\xe5\x9e\x8b") << "other scripts stay";
  const std::string j = printable_json(json::Json{{"k", "\x1b\xe2\x80\xae\xff"}});
  for (unsigned char c : j) EXPECT_LT(c, 0x80);
  EXPECT_EQ(j, "{\"k\":\"\\u001b\\u202e\\ufffd\"}");
}

// Plaintext buffers are kept out of core dumps (MADV_DONTDUMP shows as "dd" in smaps).
TEST(SecureMemory, BuffersAreNotDumped) {
  auto b = SecureBuffer::allocate(3 << 20, 2 << 20);
  ASSERT_TRUE(b) << b.error().to_string();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % (2 << 20), 0u);
  b->data()[0] = 1;
  const std::string smaps = testing::read_file("/proc/self/smaps");
  char start[32];
  std::snprintf(start, sizeof start, "%lx-", static_cast<unsigned long>(reinterpret_cast<uintptr_t>(b->data())));
  const size_t at = smaps.find(start);
  ASSERT_NE(at, std::string::npos);
  const size_t flags = smaps.find("VmFlags:", at);
  ASSERT_NE(flags, std::string::npos);
  const std::string line = smaps.substr(flags, smaps.find('\n', flags) - flags);
  EXPECT_NE(line.find(" dd"), std::string::npos) << line;
  EXPECT_EQ(secure_memory_stats().buffer_bytes, uint64_t{3} << 20);
}

}  // namespace
}  // namespace mlfx
