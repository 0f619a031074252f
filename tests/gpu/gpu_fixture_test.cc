// Replays the real GPU core dumps that tests/gpu/run_gpu_check.sh brought back from a machine
// with an NVIDIA GPU (tests/gpu/fixtures/fixture-NAME.nvcudmp.gz, the driver's pipe-triggered
// dump and the CUPTI copy-out, with fixture-NAME.json: the victim's own truth of every CUDA
// storage): each opens with CudaCoreLayer and holds every storage's bytes at its data pointer,
// hashed as the victim hashed them. Skips, saying so, while no fixture is committed.
// (MLFX_GPU_FIXTURES overrides the directory.)
#include <gtest/gtest.h>

#include <filesystem>

#include "layers/cuda_core_layer.h"
#include "layers/file_layer.h"
#include "mlfx/base/json.h"
#include "mlfx/crypto/hash.h"
#include "test_util.h"

namespace mlfx {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> fixtures() {
  const char* env = std::getenv("MLFX_GPU_FIXTURES");
  const fs::path dir = env ? env : MLFX_GPU_FIXTURE_DIR;
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".json" && e.path().filename().string().rfind("fixture-", 0) == 0) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(RealGpuDumps, EveryCudaStorageIsInTheDumpBitExactly) {
  const std::vector<fs::path> found = fixtures();
  if (found.empty())
    GTEST_SKIP() << "no real GPU core dump is committed yet: tests/gpu/README.md says how run_gpu_check.sh makes "
                    "them on a machine with an NVIDIA GPU";
  for (const fs::path& truth_path : found) {
    SCOPED_TRACE(truth_path.string());
    const json::Json truth = json::Json::parse(testing::read_file(truth_path));
    fs::path dump_path = truth_path;
    dump_path.replace_extension(".nvcudmp.gz");
    auto file = layers::FileLayer::open(dump_path);
    ASSERT_TRUE(file) << file.error().to_string();
    auto dump = layers::CudaCoreLayer::open(std::shared_ptr<const layers::Layer>(std::move(*file)), uint64_t{4} << 30);
    ASSERT_TRUE(dump) << dump.error().to_string();
    const layers::CudaCoreInfo& info = (*dump)->info();
    EXPECT_TRUE(info.gzip);
    ASSERT_FALSE(info.devices.empty());
    EXPECT_EQ(info.devices[0].name, truth["device"]["name"].get<std::string>());
    size_t checked = 0;
    for (const json::Json& t : truth["tensors"]) {
      const uint64_t addr = t["data_ptr"].get<uint64_t>(), size = t["storage_bytes"].get<uint64_t>();
      std::vector<uint8_t> bytes(size);
      ASSERT_TRUE((*dump)->read(addr, bytes.data(), size)) << t["key"];
      EXPECT_EQ(crypto::sha256_hex(bytes), t["sha256"].get<std::string>()) << t["key"];
      ++checked;
    }
    EXPECT_GT(checked, 0u);
  }
}

}  // namespace
}  // namespace mlfx
