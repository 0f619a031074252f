// CUDA tensors recovered bit-exactly from a GPU core dump beside the process image. No GPU runs
// here, so both halves are synthetic: the Python process is synthetic_image.h's (CPython 3.11,
// a torch-like model laid out per torch_layout.h) with some storages moved to device cuda:0 at
// device addresses, and the GPU core dump is written per NVIDIA's public cudacoredump.h with
// those bytes at those addresses (synthetic_cuda_core.h). `mlfx recover CORE --gpu-core DUMP`
// must export the device bytes exactly, say where each came from, and check the storages
// against the dump's allocations; without the dump, or with one that skipped global memory,
// the CUDA tensors are missing with the reason. (tests/gpu/ runs the same on a real GPU.)
#include <gtest/gtest.h>

#include <map>

#include "cupti/copy_out.h"
#include "exporters/safetensors_reader.h"
#include "frontends/torch/torch_layout.h"
#include "mlfx/base/json.h"
#include "synthetic_cuda_core.h"
#include "synthetic_image.h"
#include "test_util.h"

namespace mlfx {
namespace {

namespace fs = std::filesystem;
using synthetic::pattern;

constexpr uint64_t kDevice = 0x7f5a00000000;  // where the "caching allocator" put the storages
const frontends::torch::TorchLayout& L = frontends::torch::kTorchUpTo22;

class GpuRecover : public ::testing::Test {
 protected:
  GpuRecover() {
    fuzz::PyHeap& py = process.py();
    model = fuzz::make_torch_model(py);
    process.import_torch();
    process.track(model.all_objects);
    // fc.weight (3x4 float32) and fc.bias (3) live on cuda:0, one 512-byte block each.
    weight = to_cuda(model.tensors[0], kDevice, 48, 11);
    bias = to_cuda(model.tensors[1], kDevice + 512, 12, 12);
    testing::write_file(dir / "core", process.core());
  }
  // Moves a tensor's storage to cuda:0 at `addr`; returns the bytes the GPU holds there.
  std::vector<uint8_t> to_cuda(uint64_t tensor, uint64_t addr, size_t bytes, uint32_t seed) {
    fuzz::Blob& b = process.blob();
    const uint64_t storage = b.get64(b.get64(tensor + L.thp_impl) + L.impl_storage);
    b.put64(storage + L.storage_data, addr);
    b.put8(storage + L.storage_device, 1);      // c10::DeviceType::CUDA
    b.put8(storage + L.storage_device + 1, 0);  // index 0
    return pattern(bytes, seed);
  }
  synthetic::CudaDumpSpec dump_spec() const {
    synthetic::CudaDumpSpec spec;
    // One cudaMalloc'd segment of 2 MiB holding both blocks, and another allocation.
    std::vector<uint8_t> segment = pattern(2u << 20, 5);
    std::copy(weight.begin(), weight.end(), segment.begin());
    std::copy(bias.begin(), bias.end(), segment.begin() + 512);
    spec.memory = {{kDevice, segment}, {kDevice + (4u << 20), pattern(4096, 6)}};
    return spec;
  }
  testing::CommandResult recover(const std::string& extra, const std::string& out) {
    return testing::run(testing::mlfx_bin() + " recover " + (dir / "core") + " " + extra + " --out " + (dir / out) + " -q");
  }
  json::Json report(const std::string& out) { return json::Json::parse(testing::read_file(dir / out + "/report.json")); }
  std::vector<uint8_t> exported(const std::string& out, const std::string& key) {
    auto f = exporters::SafetensorsFile::read(dir / out + "/models/0-Net/state_dict.safetensors");
    EXPECT_TRUE(f) << f.error().to_string();
    const exporters::SafetensorsTensor* t = f ? f->find(key) : nullptr;
    if (!t) return {};
    ByteView d = f->data(*t);
    return {d.begin(), d.end()};
  }

  testing::TempDir dir;
  fuzz::PythonProcess process;
  fuzz::TorchModel model;
  std::vector<uint8_t> weight, bias;
};

TEST_F(GpuRecover, CudaTensorsComeFromTheGpuDumpBitExactly) {
  for (bool gz : {false, true}) {
    const std::string dump = synthetic::cuda_dump(dump_spec());
    testing::write_file(dir / "dump", gz ? synthetic::gzip(dump) : dump);
    const std::string out = gz ? "out-gz" : "out";
    auto r = recover("--gpu-core " + (dir / "dump"), out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(exported(out, "fc.weight"), weight);
    EXPECT_EQ(exported(out, "fc.bias"), bias);
    json::Json rep = report(out);
    const json::Json& gpu = rep["gpu"];
    EXPECT_EQ(gpu["tensors"]["cuda"], 2);
    EXPECT_EQ(gpu["tensors"]["from_gpu_dump"], 2);
    EXPECT_EQ(gpu["tensors"]["missing"], 0);
    EXPECT_EQ(gpu["dump"]["gzip"], gz);
    EXPECT_EQ(gpu["dump"]["devices"][0]["name"], "NVIDIA H100 80GB HBM3");
    EXPECT_EQ(gpu["dump"]["metadata"]["driver_version"], "580.65");
    const json::Json& check = gpu["allocator_check"];
    EXPECT_EQ(check["storages"], 2);
    EXPECT_EQ(check["in_one_section"], 2);
    EXPECT_EQ(check["sections_without_a_storage"], 1);
    EXPECT_EQ(check["consistent"], true);
    EXPECT_EQ(rep["models"][0]["complete"], true) << rep["diagnostics"].dump();
    json::Json arch = json::Json::parse(testing::read_file(dir / out + "/models/0-Net/architecture.json"));
    EXPECT_EQ(arch["tensors"]["fc.weight"]["device"], "cuda:0");
    EXPECT_EQ(arch["tensors"]["running"]["device"], "cpu");
    // Every member written is specified in docs/outputs.md.
    auto spec = testing::run("python3 " + std::string(MLFX_SOURCE_DIR) + "/tests/docs/outputs_spec_test.py " + (dir / out));
    EXPECT_EQ(spec.exit_code, 0) << spec.output;
  }
}

TEST_F(GpuRecover, WithoutTheDumpCudaTensorsAreMissingAndSaySo) {
  auto r = recover("", "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json::Json rep = report("out");
  EXPECT_EQ(rep["models"][0]["complete"], false);
  EXPECT_EQ(rep["models"][0]["missing"], json::Json({"fc.weight", "fc.bias"}));
  EXPECT_EQ(rep["gpu"]["dump"], nullptr);
  EXPECT_EQ(rep["gpu"]["tensors"]["missing"], 2);
  EXPECT_NE(rep["diagnostics"]["warnings"].dump().find("no GPU core dump"), std::string::npos);

  // A dump made with skip_global_memory holds none of it, and the reason says so.
  synthetic::CudaDumpSpec spec;
  spec.flags |= cudacore::kFlagSkipGlobalMemory;
  spec.memory.clear();
  testing::write_file(dir / "skipped", synthetic::cuda_dump(spec));
  r = recover("--gpu-core " + (dir / "skipped"), "out-skipped");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  rep = report("out-skipped");
  EXPECT_EQ(rep["gpu"]["dump"]["global_memory_skipped"], true);
  EXPECT_NE(rep["diagnostics"]["warnings"].dump().find("skip_global_memory"), std::string::npos);
  EXPECT_EQ(rep["gpu"]["allocator_check"]["outside_the_dump"], 2);
}

TEST_F(GpuRecover, AStorageAcrossTwoAllocationsContradictsTheAllocator) {
  synthetic::CudaDumpSpec spec = dump_spec();
  // The weight's block now straddles the end of one section and the start of the next.
  std::vector<uint8_t> first(spec.memory[0].bytes.begin(), spec.memory[0].bytes.begin() + 16);
  std::vector<uint8_t> second(spec.memory[0].bytes.begin() + 16, spec.memory[0].bytes.end());
  spec.memory[0] = {kDevice, first};
  spec.memory.push_back({kDevice + 16, second});
  testing::write_file(dir / "split", synthetic::cuda_dump(spec));
  auto r = recover("--gpu-core " + (dir / "split"), "out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(exported("out", "fc.weight"), weight);  // the bytes are all there, read across both
  const json::Json check = report("out")["gpu"]["allocator_check"];
  EXPECT_EQ(check["spanning_sections"], 1);
  EXPECT_EQ(check["consistent"], false);
}

// The agent's CUPTI copy-out (agent/cupti) writes the same format; a range it could not read
// is zeros in the file and listed in .mlfx.unreadable: those bytes are missing, never zeros.
class HostMemory final : public cupti::DeviceReader {
 public:
  std::map<uint64_t, std::vector<uint8_t>> ranges;
  uint64_t fail_at = 0;
  size_t chunk_size() const override { return 32; }
  const uint8_t* read(uint64_t, uint64_t address, size_t len, std::string* error) override {
    if (fail_at >= address && fail_at < address + len) return *error = "cuMemcpyDtoH: CUDA_ERROR_ILLEGAL_ADDRESS", nullptr;
    auto it = std::prev(ranges.upper_bound(address));
    return it->second.data() + (address - it->first);
  }
};

TEST_F(GpuRecover, TheCuptiCopyOutReadsTheSameAndItsUnreadableBytesAreMissing) {
  HostMemory gpu;
  gpu.ranges = {{kDevice, weight}, {kDevice + 512, bias}};
  std::vector<cupti::LiveRange> live(2);
  live[0].address = kDevice, live[0].size = weight.size();
  live[1].address = kDevice + 512, live[1].size = bias.size();
  cupti::DumpTables tables;
  tables.devices = {synthetic::synthetic_device(88)};
  tables.meta.generator = "mlfx-cupti test";
  for (uint64_t fail_at : {uint64_t{0}, kDevice + 40}) {
    gpu.fail_at = fail_at;
    std::string dump;
    const cupti::CopyOutReport written = cupti::write_dump(live, tables, gpu, [&dump](const void* p, size_t n) {
      return dump.append(static_cast<const char*>(p), n), true;
    });
    ASSERT_TRUE(written.written) << written.error;
    EXPECT_EQ(written.failed_ranges, fail_at ? 1u : 0u);
    testing::write_file(dir / "copy-out", dump);
    const std::string out = fail_at ? "out-failed" : "out";
    auto r = recover("--gpu-core " + (dir / "copy-out"), out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    json::Json rep = report(out);
    EXPECT_EQ(exported(out, "fc.bias"), bias);
    if (!fail_at) {
      EXPECT_EQ(exported(out, "fc.weight"), weight);
      EXPECT_EQ(rep["gpu"]["dump"]["unreadable_bytes"], 0);
      continue;
    }
    // The weight's last 16 bytes (from the failing 32-byte chunk at +32) could not be read.
    EXPECT_TRUE(exported(out, "fc.weight").empty());
    EXPECT_EQ(rep["models"][0]["missing"], json::Json({"fc.weight"}));
    EXPECT_EQ(rep["gpu"]["dump"]["unreadable_bytes"], 16);
    EXPECT_EQ(rep["gpu"]["tensors"]["missing"], 1);
  }
}

TEST_F(GpuRecover, ABadGpuDumpIsRefusedWithTheReason) {
  std::string dump = synthetic::cuda_dump(dump_spec());
  testing::write_file(dir / "cut", dump.substr(0, dump.size() - 200));
  auto r = recover("--gpu-core " + (dir / "cut"), "out");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("GPU core dump"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "out/report.json"));
  r = recover("--gpu-core " + (dir / "core"), "out2");  // an x86-64 core is not a GPU dump
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not a CUDA core dump"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace mlfx
