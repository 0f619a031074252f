// A .pt and a .safetensors past 4 GiB: a 4 GiB + 4 MiB storage (an anonymous mapping, so
// untouched pages cost no memory) with random islands, one of them across the 4 GiB mark,
// between small tensors, so the archive needs ZIP64 sizes and offsets. Checked with Python's
// zipfile (CRCs), torch.load and a json+struct safetensors reader. Needs ~9 GiB of disk.
#include <sys/mman.h>
#include <sys/statvfs.h>

#include <gtest/gtest.h>

#include <chrono>

#include "exporters/safetensors_writer.h"
#include "exporters/torch_pt_writer.h"
#include "python_util.h"
#include "sample_tensors.h"

namespace mlfx::exporters {
namespace {

using mlfx::testing::TempDir;
using testing::kSystemPython;

constexpr uint64_t kGiB = 1ull << 30;

TEST(LargeExports, PastFourGiB) {
  if (!testing::python_has("torch"))
    GTEST_SKIP() << kSystemPython << " cannot import torch (install python3-torch)";
  TempDir dir;
  struct statvfs vfs;
  ASSERT_EQ(statvfs(dir.path().c_str(), &vfs), 0);
  const uint64_t free_bytes = uint64_t(vfs.f_bavail) * vfs.f_frsize;
  if (free_bytes < 12 * kGiB)
    GTEST_SKIP() << "needs 12 GiB free in " << dir.path() << ", only " << free_bytes / kGiB << " GiB";

  const uint64_t big_size = 4 * kGiB + (4 << 20);
  void* map = mmap(nullptr, big_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { munmap(p, n); }
  } unmap{map, big_size};
  auto* big = static_cast<uint8_t*>(map);
  const std::vector<uint64_t> islands = {0, 4 * kGiB - 2048, big_size - 4096};
  nlohmann::json island_json = nlohmann::json::array();
  for (uint64_t at : islands) {
    Bytes r = testing::random_bytes(4096, at);
    std::copy(r.begin(), r.end(), big + at);
    island_json.push_back({at, to_base64(r)});
  }

  testing::Sample s;
  s.add_own("before", kFloat, {4});
  TensorRecord t;
  t.key = "big";
  t.scalar_type = kByte;
  t.shape = {int64_t(big_size)};
  t.strides = {1};
  t.storage = {7, ByteView(big, big_size), big_size, "cpu"};
  s.tensors().push_back(t);
  t.key = "big.view";  // shares the big storage, offset past 4 GiB
  t.shape = {16};
  t.storage_offset = int64_t(4 * kGiB - 8);
  s.tensors().push_back(t);
  s.add_own("after", kFloat, {4});

  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(write_torch_state_dict(dir / "big.pt", s.tensors()));
  ASSERT_TRUE(write_safetensors(dir / "big.safetensors", s.tensors(), {}));
  std::cout << "wrote 2 x 4 GiB in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s\n";

  nlohmann::json info = {{"islands", island_json},
                         {"big_size", big_size},
                         {"before", to_base64(s.storage(0))},
                         {"after", to_base64(s.storage(1))}};
  mlfx::testing::write_file(dir / "info.json", info.dump());
  auto r = testing::run_python(dir, R"(
import base64, json, struct, sys, zipfile
import torch
info = json.load(open(sys.argv[1] + '/info.json'))
pt, st = sys.argv[1] + '/big.pt', sys.argv[1] + '/big.safetensors'
big_size = info['big_size']
islands = [(at, base64.b64decode(b)) for at, b in info['islands']]

z = zipfile.ZipFile(pt)
names = z.namelist()
assert names == ['archive/data.pkl', 'archive/byteorder', 'archive/data/0', 'archive/data/1',
                 'archive/data/2', 'archive/version'], names
assert z.getinfo('archive/data/1').file_size == big_size
assert z.getinfo('archive/data/2').header_offset > 2**32
assert z.testzip() is None, 'CRC mismatch'
print('zip ok')

sd = torch.load(pt)
assert list(sd) == ['before', 'big', 'big.view', 'after'], list(sd)
big = sd['big']
assert big.dtype == torch.uint8 and big.shape == (big_size,)
for at, want in islands:
    assert big[at:at + len(want)].numpy().tobytes() == want, at
assert big[4096:1 << 20].count_nonzero().item() == 0
v = sd['big.view']
assert v.storage_offset() == 4 * 2**30 - 8 and v.shape == (16,)
assert v.storage().data_ptr() == big.storage().data_ptr(), 'sharing lost'
assert v.numpy().tobytes() == islands[1][1][2040:2056]
assert sd['before'].numpy().tobytes() == base64.b64decode(info['before'])
assert sd['after'].numpy().tobytes() == base64.b64decode(info['after'])
del sd, big, v
print('torch ok')

with open(st, 'rb') as f:
    (n,) = struct.unpack('<Q', f.read(8))
    h = json.loads(f.read(n))
    base = 8 + n
    assert list(h) == ['before', 'big', 'big.view', 'after'], list(h)
    assert h['big']['data_offsets'] == [16, 16 + big_size]
    assert h['after']['data_offsets'] == [32 + big_size, 48 + big_size]
    for at, want in islands:
        f.seek(base + 16 + at)
        assert f.read(len(want)) == want, at
    f.seek(base + 16 + big_size)
    assert f.read(16) == islands[1][1][2040:2056]
    assert f.read(16) == base64.b64decode(info['after'])
    assert f.read() == b''
print('safetensors ok')
)", dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "zip ok\ntorch ok\nsafetensors ok\n");
}

}  // namespace
}  // namespace mlfx::exporters
