// The CUPTI callbacks translated into Recorder calls: the driver API's parameter structs
// (generated_cuda_meta.h, which cupti.h includes; it has no include guard) read at
// CUPTI_API_EXIT, the resource domain's contexts. Apart from injection.cc so that it is tested
// with hand-made callback data, without a driver.
#pragma once

#include <cuda.h>
#include <cupti.h>

#include <cstddef>
#include <cstdint>

namespace mlfx::cupti {

class Recorder;

struct CallbackHooks {
  Recorder* recorder = nullptr;
  uint64_t (*caller)() = nullptr;  // the application's return address (a stack walk); null: 0
  CUptiResult (*device_id)(CUcontext, uint32_t*) = nullptr;  // cuptiGetDeviceId; null: device -1
};

// A driver API call returned (CUPTI_API_EXIT): a failure is an error event (unless benign); a
// successful allocation, free or VMM call updates the table.
void on_driver_exit(const CallbackHooks& hooks, CUpti_CallbackId cbid,
                    const CUpti_CallbackData* data);
// Context created or about to be destroyed.
void on_resource(const CallbackHooks& hooks, CUpti_CallbackId cbid, const CUpti_ResourceData* data);

// The driver API callbacks the table needs (subscribed one by one with MLFX_CUPTI_ERRORS=0).
extern const CUpti_CallbackId kMemoryCallbacks[];
extern const size_t kMemoryCallbackCount;

}  // namespace mlfx::cupti
