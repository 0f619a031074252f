// The CUPTI callbacks' translation (agent/cupti/callbacks.cc) fed hand-made callback data, as the
// driver would pass it at CUPTI_API_EXIT: the parameter structs of every allocation, free and
// VMM call read into the table; a failed call is an error event and changes nothing; contexts
// from the resource domain. Built where the CUDA toolkit's headers are; no driver needed.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "cupti/callbacks.h"
#include "cupti/recorder.h"
#include "test_util.h"

namespace mlfx::cupti {
namespace {

const CUcontext kCtx = reinterpret_cast<CUcontext>(0xc0c0);

uint64_t fake_caller() { return 0x401234; }
CUptiResult fake_device_id(CUcontext, uint32_t* device) {
  *device = 3;
  return CUPTI_SUCCESS;
}

struct Driver {
  testing::TempDir dir;
  std::unique_ptr<Recorder> recorder;
  CallbackHooks hooks;

  Driver() {
    RecorderConfig config;
    config.log_path = dir / "events.jsonl";
    config.error_line_interval_ns = 0;  // every error gets its line
    recorder = std::make_unique<Recorder>(config);
    hooks = {recorder.get(), fake_caller, fake_device_id};
    CUpti_ResourceData r{};
    r.context = kCtx;
    on_resource(hooks, CUPTI_CBID_RESOURCE_CONTEXT_CREATED, &r);
  }
  // One driver call returning `rc`, its parameters in `params`.
  template <typename Params>
  void exit(CUpti_CallbackId cbid, const char* name, const Params& params,
            CUresult rc = CUDA_SUCCESS) {
    CUpti_CallbackData d{};
    d.callbackSite = CUPTI_API_EXIT;
    d.functionName = name;
    d.functionParams = &params;
    d.functionReturnValue = &rc;
    d.context = kCtx;
    on_driver_exit(hooks, cbid, &d);
  }
  std::vector<nlohmann::json> log() {
    std::vector<nlohmann::json> out;
    std::istringstream in(testing::read_file(dir / "events.jsonl"));
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }
};

TEST(CuptiCallbacks, AllocationsAndFrees) {
  Driver drv;
  CUdeviceptr p1 = 0x7f0000000000, p2 = 0x7f0000100000, p3 = 0x7f0000200000, p4 = 0x7f0000300000,
              p5 = 0x7f0000400000;
  size_t pitch = 512;
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAlloc_v2, "cuMemAlloc_v2", cuMemAlloc_v2_params{&p1, 4096});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAllocPitch_v2, "cuMemAllocPitch_v2",
           cuMemAllocPitch_v2_params{&p2, &pitch, 500, 10, 4});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAllocManaged, "cuMemAllocManaged",
           cuMemAllocManaged_params{&p3, 100, 1});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAllocAsync_ptsz, "cuMemAllocAsync_ptsz",
           cuMemAllocAsync_params{&p4, 200, reinterpret_cast<CUstream>(0x5)});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync",
           cuMemAllocFromPoolAsync_params{&p5, 300, reinterpret_cast<CUmemoryPool>(0x9), nullptr});

  auto ranges = drv.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 5u);
  EXPECT_EQ(ranges[0].size, 4096u);
  EXPECT_EQ(ranges[0].device, 3);  // from cuptiGetDeviceId at context creation
  EXPECT_EQ(ranges[0].context, 0xc0c0u);
  EXPECT_EQ(ranges[0].site.return_address, 0x401234u);
  EXPECT_EQ(ranges[1].kind, RangeKind::kPitch);
  EXPECT_EQ(ranges[1].size, 5120u);  // pitch * height
  EXPECT_EQ(ranges[2].kind, RangeKind::kManaged);
  EXPECT_EQ(ranges[3].kind, RangeKind::kAsync);
  EXPECT_EQ(ranges[3].stream, 0x5u);
  EXPECT_EQ(ranges[4].kind, RangeKind::kPool);

  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemFree_v2, "cuMemFree_v2", cuMemFree_v2_params{p1});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemFreeAsync, "cuMemFreeAsync",
           cuMemFreeAsync_params{p4, nullptr});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemFreeAsync_ptsz, "cuMemFreeAsync_ptsz",
           cuMemFreeAsync_params{p5, nullptr});
  EXPECT_EQ(drv.recorder->table().ranges().size(), 2u);
  EXPECT_EQ(drv.log().at(1)["api"], "cuMemAlloc_v2");  // after context-created
}

TEST(CuptiCallbacks, Vmm) {
  Driver drv;
  CUdeviceptr base = 0;
  CUmemGenericAllocationHandle handle = 0;
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAddressReserve, "cuMemAddressReserve",
           cuMemAddressReserve_params{&base, 1 << 22, 0, 0, 0});
  EXPECT_EQ(drv.recorder->table().stats().reservations, 1u);
  base = 0x7f1000000000;  // what the driver wrote back: read at exit, not at entry
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAddressReserve, "cuMemAddressReserve",
           cuMemAddressReserve_params{&base, 1 << 22, 0, 0, 0});
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 1;
  handle = 0xabc;
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemCreate, "cuMemCreate",
           cuMemCreate_params{&handle, 1 << 21, &prop, 0});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemMap, "cuMemMap",
           cuMemMap_params{base, 1 << 21, 0, handle, 0});
  auto ranges = drv.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].kind, RangeKind::kVmm);
  EXPECT_EQ(ranges[0].address, base);
  EXPECT_EQ(ranges[0].device, 1);  // the physical memory's location
  EXPECT_EQ(ranges[0].handle, 0xabcu);

  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemRelease, "cuMemRelease", cuMemRelease_params{handle});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemUnmap, "cuMemUnmap", cuMemUnmap_params{base, 1 << 21});
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAddressFree, "cuMemAddressFree",
           cuMemAddressFree_params{base, 1 << 22});
  const auto stats = drv.recorder->table().stats();
  EXPECT_EQ(stats.ranges, 0u);
  EXPECT_EQ(stats.handles, 0u);
  EXPECT_EQ(stats.reservations, 1u);  // the first, at address 0, was never freed
}

TEST(CuptiCallbacks, FailedCallIsAnErrorAndChangesNothing) {
  Driver drv;
  CUdeviceptr p = 0x1234;  // garbage: the call failed, *dptr is not an allocation
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAlloc_v2, "cuMemAlloc_v2",
           cuMemAlloc_v2_params{&p, 1ull << 40}, CUDA_ERROR_OUT_OF_MEMORY);
  int launch = 0;
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel, "cuLaunchKernel", launch,
           CUDA_ERROR_ILLEGAL_ADDRESS);
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuStreamQuery, "cuStreamQuery", launch, CUDA_ERROR_NOT_READY);
  EXPECT_TRUE(drv.recorder->table().ranges().empty());
  EXPECT_EQ(drv.recorder->error_events(), 2u);
  std::vector<std::string> errors;
  for (auto& e : drv.log())
    if (e["event"] == "error")
      errors.push_back(e["api"].get<std::string>() + " " + e["error"].get<std::string>());
  EXPECT_EQ(errors, (std::vector<std::string>{"cuMemAlloc_v2 CUDA_ERROR_OUT_OF_MEMORY",
                                              "cuLaunchKernel CUDA_ERROR_ILLEGAL_ADDRESS"}));
}

TEST(CuptiCallbacks, ContextDestroyed) {
  Driver drv;
  CUdeviceptr p = 0x7f0000000000;
  drv.exit(CUPTI_DRIVER_TRACE_CBID_cuMemAlloc_v2, "cuMemAlloc_v2", cuMemAlloc_v2_params{&p, 64});
  CUpti_ResourceData r{};
  r.context = kCtx;
  on_resource(drv.hooks, CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING, &r);
  EXPECT_TRUE(drv.recorder->table().ranges().empty());
  EXPECT_EQ(drv.recorder->table().stats().contexts, 0u);
}

TEST(CuptiCallbacks, MemoryCallbackList) {
  EXPECT_EQ(kMemoryCallbackCount, 16u);
  for (size_t i = 0; i < kMemoryCallbackCount; ++i)
    EXPECT_NE(kMemoryCallbacks[i], CUPTI_DRIVER_TRACE_CBID_INVALID);
}

}  // namespace
}  // namespace mlfx::cupti
