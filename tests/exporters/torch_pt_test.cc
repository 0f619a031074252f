#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>

#include "exporters/pickle_writer.h"
#include "exporters/torch_pt_writer.h"
#include "exporters/zip_writer.h"
#include "python_util.h"
#include "sample_tensors.h"

namespace mlfx::exporters {
namespace {

using mlfx::testing::TempDir;
using testing::kSystemPython;
using testing::run_python;
using testing::Sample;

#define REQUIRE_PYTHON()                                                              \
  if (!testing::python_has("numpy"))                                                  \
  GTEST_SKIP() << kSystemPython << " with numpy is not available (python3-numpy)"

TEST(PickleWriter, IntegersStringsBoolsAndMemoLoadInPython) {
  REQUIRE_PYTHON();
  TempDir dir;
  PickleWriter p;
  p.mark();
  for (int64_t v : {int64_t(0), int64_t(255), int64_t(256), int64_t(65535), int64_t(65536),
                    int64_t(-1), int64_t(INT32_MIN), int64_t(INT32_MAX), int64_t(1) << 31,
                    int64_t(INT32_MIN) - 1, int64_t(1) << 40, int64_t(-128), int64_t(-129),
                    int64_t(128) << 8, INT64_MAX, INT64_MIN})
    p.integer(v);
  p.unicode("gr\xc3\xbc\xc3\x9f");
  p.boolean(true);
  p.boolean(false);
  p.int_tuple(std::vector<int64_t>{});
  p.int_tuple(std::vector<int64_t>{7});
  p.int_tuple(std::vector<int64_t>{1, 2, 3});
  p.int_tuple(std::vector<int64_t>{1, 2, 3, 4, 5});
  p.empty_dict();
  p.tuple_from_mark();
  p.put();
  p.mark();  // > 256 memo entries: LONG_BINPUT / LONG_BINGET
  for (int i = 0; i < 300; ++i) {
    p.unicode("s" + std::to_string(i));
    p.put();
  }
  p.get(299);
  p.get(1);
  p.get(0);
  p.tuple_from_mark();
  p.small_tuple(2);
  p.stop();
  mlfx::testing::write_file(dir / "p.pkl", p.data());
  auto r = run_python(dir, R"(
import pickle, sys
a, b = pickle.loads(open(sys.argv[1], 'rb').read())
print(repr(a))
print(len(b), b[0], b[-3], b[-2], b[-1][0:3])
)", dir / "p.pkl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output,
            "(0, 255, 256, 65535, 65536, -1, -2147483648, 2147483647, 2147483648, -2147483649, "
            "1099511627776, -128, -129, 32768, 9223372036854775807, -9223372036854775808, "
            "'grüß', True, False, (), (7,), (1, 2, 3), (1, 2, 3, 4, 5), {})\n"
            "303 s0 s298 s0 (0, 255, 256)\n");
}

TEST(TorchPickle, SharedStoragesArePickledOnce) {
  REQUIRE_PYTHON();
  TempDir dir;
  Sample s = testing::make_full_sample();
  auto tp = torch_state_dict_pickle(s.tensors());
  ASSERT_TRUE(tp) << tp.error().to_string();
  ASSERT_EQ(tp->storages.size(), s.storage_count());
  for (size_t i = 0; i < s.storage_count(); ++i) {
    EXPECT_EQ(tp->storages[i].bytes.data(), s.storage(i).data()) << i;  // spans, not copies
    EXPECT_EQ(tp->storages[i].bytes.size(), s.storage(i).size()) << i;
  }
  mlfx::testing::write_file(dir / "data.pkl", tp->pickle);
  // Disassemble (validates every opcode) and count persistent ids and storage globals.
  auto r = run_python(dir, R"(
import pickletools, sys, io
out = io.StringIO()
pickletools.dis(open(sys.argv[1], 'rb').read(), out=out)
text = out.getvalue()
print(text.count('BINPERSID'), text.count("GLOBAL     'torch FloatStorage'"),
      text.count("GLOBAL     'torch._utils _rebuild_tensor_v2'"), 'highest protocol among opcodes = 2' in text)
)", dir / "data.pkl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, std::to_string(s.storage_count()) + " 1 1 True\n");
}

// Reads the file's last 22 bytes (end of central directory record).
std::string tail(const std::string& path, size_t n) {
  std::string f = mlfx::testing::read_file(path);
  return f.substr(f.size() - n);
}

TEST(TorchPt, ZipStructureChecksWithPythonZipfile) {
  REQUIRE_PYTHON();
  TempDir dir;
  Sample s = testing::make_full_sample();
  SafetensorsMetadata none;
  const std::string pt = dir / "m.pt";
  ASSERT_TRUE(write_torch_state_dict(pt, s.tensors()));
  auto list = mlfx::testing::run(std::string(kSystemPython) + " -m zipfile -l " + pt);
  ASSERT_EQ(list.exit_code, 0) << list.output;
  for (std::string name : {"archive/data.pkl", "archive/byteorder", "archive/version"})
    EXPECT_NE(list.output.find(name + " "), std::string::npos) << name << "\n" << list.output;
  for (size_t i = 0; i < s.storage_count(); ++i)
    EXPECT_NE(list.output.find("archive/data/" + std::to_string(i) + " "), std::string::npos);
  auto test = mlfx::testing::run(std::string(kSystemPython) + " -m zipfile -t " + pt);
  EXPECT_EQ(test.exit_code, 0);
  EXPECT_NE(test.output.find("Done testing"), std::string::npos) << test.output;
  EXPECT_EQ(test.output.find("corrupt"), std::string::npos) << test.output;
  // Names, CRCs, stored method and 64-byte payload alignment, independently.
  mlfx::testing::write_file(dir / "truth.json", s.truth_json(none));
  auto check = mlfx::testing::run(std::string(kSystemPython) + " " + testing::check_script() +
                                  " --zip-only --truth " + (dir / "truth.json") + " --pt " + pt);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  // A small archive ends with a plain end record, no ZIP64.
  EXPECT_EQ(tail(pt, 22).substr(0, 4), "PK\x05\x06");
  EXPECT_EQ(mlfx::testing::read_file(pt).find("PK\x06\x06"), std::string::npos);

  // The same check catches a flipped payload byte (CRC mismatch).
  std::string bytes = mlfx::testing::read_file(pt);
  const Bytes& first = s.storage(0);
  size_t at = bytes.find(std::string(first.begin(), first.end()));  // storage 0's payload
  ASSERT_NE(at, std::string::npos);
  bytes[at] ^= 0x40;
  mlfx::testing::write_file(dir / "bad.pt", bytes);
  auto bad = mlfx::testing::run(std::string(kSystemPython) + " -m zipfile -t " + (dir / "bad.pt"));
  EXPECT_NE(bad.output.find("corrupted"), std::string::npos) << bad.output;
}

TEST(ZipWriter, Zip64ForMoreThan65535Entries) {
  REQUIRE_PYTHON();
  TempDir dir;
  const std::string path = dir / "many.zip";
  auto zip = ZipWriter::create(path);
  ASSERT_TRUE(zip);
  const size_t n = 70000;
  for (size_t i = 0; i < n; ++i) {
    std::string body = "entry " + std::to_string(i);
    ASSERT_TRUE(zip->add("top/" + std::to_string(i), as_bytes(body), i % 2 ? 64 : 1));
  }
  ASSERT_TRUE(zip->finish());
  // Classic end record saturated, ZIP64 end record and locator before it.
  std::string end = tail(path, 22 + 20 + 56);
  EXPECT_EQ(end.substr(0, 4), "PK\x06\x06");
  EXPECT_EQ(end.substr(56, 4), "PK\x06\x07");
  EXPECT_EQ(end.substr(76, 4), "PK\x05\x06");
  EXPECT_EQ(load_le<uint16_t>(reinterpret_cast<const uint8_t*>(end.data()) + 76 + 10), 0xffff);
  auto r = run_python(dir, R"(
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = z.namelist()
assert names == ['top/%d' % i for i in range(70000)], 'names'
assert z.testzip() is None, 'crc'
assert z.read('top/69999') == b'entry 69999'
f = open(sys.argv[1], 'rb')
for info in z.infolist()[1::2]:
    f.seek(info.header_offset + 26)
    nl, el = int.from_bytes(f.read(2), 'little'), int.from_bytes(f.read(2), 'little')
    assert (info.header_offset + 30 + nl + el) % 64 == 0, info.filename
print('ok', len(names))
)", path);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "ok 70000\n");
}

TEST(ZipWriter, RefusesDuplicatesAndBadNames) {
  TempDir dir;
  auto zip = ZipWriter::create(dir / "z.zip");
  ASSERT_TRUE(zip);
  ASSERT_TRUE(zip->add("a/x", as_bytes("1")));
  EXPECT_FALSE(zip->add("a/x", as_bytes("2")));
  EXPECT_FALSE(zip->add("", as_bytes("2")));
  EXPECT_FALSE(zip->add(std::string("a/\xff", 3), as_bytes("2")));
  EXPECT_FALSE(zip->add("a/y", as_bytes("2"), 0));
  ASSERT_TRUE(zip->finish());
  EXPECT_FALSE(zip->add("a/z", as_bytes("3")));
}

TEST(TorchPt, RefusesWhatTorchCannotLoadAndLeavesNoFile) {
  TempDir dir;
  auto refuse = [&](std::vector<TensorRecord> ts, Errc code, const std::string& needle) {
    const std::string path = dir / "r.pt";
    auto r = write_torch_state_dict(path, ts);
    ASSERT_FALSE(r) << needle;
    EXPECT_EQ(r.error().code(), code) << r.error().to_string();
    EXPECT_NE(r.error().to_string().find(needle), std::string::npos) << r.error().to_string();
    EXPECT_FALSE(std::filesystem::exists(path));
  };
  Sample s;
  size_t a = s.add_random_storage(64);
  s.add("w", kFloat, {4}, {1}, 0, a);
  std::vector<TensorRecord> ts = s.tensors();
  ts[0].scalar_type = kComplexHalf;
  refuse(ts, Errc::kUnsupported, "no typed storage for dtype ComplexHalf");
  ts[0].scalar_type = 24;  // Float8_e4m3fn: torch 2.x saves it through _rebuild_tensor_v3
  refuse(ts, Errc::kUnsupported, "no typed storage");
  ts[0].scalar_type = kQInt8;
  refuse(ts, Errc::kUnsupported, "quantizer parameters");
  ts = {s.tensors()[0], s.tensors()[0]};
  refuse(ts, Errc::kInvalidArgument, "duplicate tensor key 'w'");
  ts[1].key = "v";
  ts[1].scalar_type = kInt;
  refuse(ts, Errc::kUnsupported, "two dtypes");
  ts[1].scalar_type = kFloat;
  Bytes other(64, 0);
  ts[1].storage.data = other;
  refuse(ts, Errc::kInvalidArgument, "describe different bytes");
  ts = s.tensors();
  ts[0].storage.device = "cuda:0\n";
  refuse(ts, Errc::kInvalidArgument, "bad device");
  ts = s.tensors();
  ts[0].scalar_type = kLong;
  ts[0].requires_grad = true;
  refuse(ts, Errc::kInvalidArgument, "requires_grad");
  ts = s.tensors();
  ts[0].storage_offset = 61;
  refuse(ts, Errc::kBadFormat, "past the end");
}

TEST(TorchPt, StorageOfPartialElementsKeepsWholeElementsOnly) {
  Sample s;
  size_t a = s.add_random_storage(10);  // 2.5 floats
  s.add("w", kFloat, {2}, {1}, 0, a);
  auto tp = torch_state_dict_pickle(s.tensors());
  ASSERT_TRUE(tp) << tp.error().to_string();
  EXPECT_EQ(tp->storages[0].bytes.size(), 8u);
  s.tensors()[0].storage_offset = 1;  // would need bytes 4..12
  EXPECT_FALSE(torch_state_dict_pickle(s.tensors()));
}

TEST(TorchPt, WriteErrorMidwayRemovesThePartialFile) {
  TempDir dir;
  Sample s;
  s.add_own("big", kFloat, {1 << 20});
  std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  struct rlimit small = old;
  small.rlim_cur = 1 << 20;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  auto r = write_torch_state_dict(dir / "p.pt", s.tensors());
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kIo) << r.error().to_string();
  EXPECT_FALSE(std::filesystem::exists(dir / "p.pt"));
}

}  // namespace
}  // namespace mlfx::exporters
