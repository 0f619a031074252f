#include "cupti/callbacks.h"

#include "cupti/recorder.h"

namespace mlfx::cupti {

namespace {

int location_device(const CUmemAllocationProp* prop) {
  return prop && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? prop->location.id : -1;
}

}  // namespace

void on_driver_exit(const CallbackHooks& hooks, CUpti_CallbackId cbid,
                    const CUpti_CallbackData* d) {
  Recorder* recorder = hooks.recorder;
  auto caller = [&hooks] { return hooks.caller ? hooks.caller() : 0; };
  const CUresult rc = *static_cast<const CUresult*>(d->functionReturnValue);
  if (rc != CUDA_SUCCESS) {
    recorder->result(d->functionName ? d->functionName : "?", static_cast<int>(rc));
    return;  // a failed call allocated or freed nothing
  }
  const auto ctx = reinterpret_cast<uint64_t>(d->context);
  const char* api = d->functionName ? d->functionName : "?";
  const void* p = d->functionParams;
  auto stream = [](CUstream s) { return reinterpret_cast<uint64_t>(s); };
  switch (cbid) {
    case CUPTI_DRIVER_TRACE_CBID_cuMemAlloc_v2: {
      auto* a = static_cast<const cuMemAlloc_v2_params*>(p);
      recorder->alloc(api, RangeKind::kDevice, *a->dptr, a->bytesize, ctx, 0, caller());
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemAllocPitch_v2: {
      auto* a = static_cast<const cuMemAllocPitch_v2_params*>(p);
      recorder->alloc(api, RangeKind::kPitch, *a->dptr, *a->pPitch * a->Height, ctx, 0, caller(),
                      *a->pPitch);
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemAllocManaged: {
      auto* a = static_cast<const cuMemAllocManaged_params*>(p);
      recorder->alloc(api, RangeKind::kManaged, *a->dptr, a->bytesize, ctx, 0, caller());
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemAllocAsync:
    case CUPTI_DRIVER_TRACE_CBID_cuMemAllocAsync_ptsz: {
      auto* a = static_cast<const cuMemAllocAsync_params*>(p);
      recorder->alloc(api, RangeKind::kAsync, *a->dptr, a->bytesize, ctx, stream(a->hStream),
                      caller());
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemAllocFromPoolAsync:
    case CUPTI_DRIVER_TRACE_CBID_cuMemAllocFromPoolAsync_ptsz: {
      auto* a = static_cast<const cuMemAllocFromPoolAsync_params*>(p);
      recorder->alloc(api, RangeKind::kPool, *a->dptr, a->bytesize, ctx, stream(a->hStream),
                      caller(), 0, reinterpret_cast<uint64_t>(a->pool));
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemFree_v2:
      recorder->free(api, static_cast<const cuMemFree_v2_params*>(p)->dptr, ctx, 0);
      break;
    case CUPTI_DRIVER_TRACE_CBID_cuMemFreeAsync:
    case CUPTI_DRIVER_TRACE_CBID_cuMemFreeAsync_ptsz: {
      auto* a = static_cast<const cuMemFreeAsync_params*>(p);
      recorder->free(api, a->dptr, ctx, stream(a->hStream));
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemAddressReserve: {
      auto* a = static_cast<const cuMemAddressReserve_params*>(p);
      recorder->reserve(*a->ptr, a->size, ctx);
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemAddressFree: {
      auto* a = static_cast<const cuMemAddressFree_params*>(p);
      recorder->address_free(a->ptr, a->size);
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemCreate: {
      auto* a = static_cast<const cuMemCreate_params*>(p);
      recorder->create(static_cast<uint64_t>(*a->handle), a->size, location_device(a->prop));
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemRelease:
      recorder->release(static_cast<uint64_t>(static_cast<const cuMemRelease_params*>(p)->handle));
      break;
    case CUPTI_DRIVER_TRACE_CBID_cuMemMap: {
      auto* a = static_cast<const cuMemMap_params*>(p);
      recorder->map(a->ptr, a->size, a->offset, static_cast<uint64_t>(a->handle), ctx, caller());
      break;
    }
    case CUPTI_DRIVER_TRACE_CBID_cuMemUnmap: {
      auto* a = static_cast<const cuMemUnmap_params*>(p);
      recorder->unmap(a->ptr, a->size);
      break;
    }
    default:
      break;
  }
}

void on_resource(const CallbackHooks& hooks, CUpti_CallbackId cbid, const CUpti_ResourceData* r) {
  Recorder* recorder = hooks.recorder;
  const auto ctx = reinterpret_cast<uint64_t>(r->context);
  if (cbid == CUPTI_CBID_RESOURCE_CONTEXT_CREATED) {
    uint32_t device = 0;
    const bool known = hooks.device_id && hooks.device_id(r->context, &device) == CUPTI_SUCCESS;
    recorder->context_created(ctx, known ? static_cast<int>(device) : -1);
  } else if (cbid == CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING) {
    recorder->context_destroyed(ctx);
  }
}

const CUpti_CallbackId kMemoryCallbacks[] = {CUPTI_DRIVER_TRACE_CBID_cuMemAlloc_v2,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAllocPitch_v2,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemFree_v2,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAllocManaged,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAllocAsync,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAllocAsync_ptsz,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAllocFromPoolAsync,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAllocFromPoolAsync_ptsz,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemFreeAsync,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemFreeAsync_ptsz,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAddressReserve,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemAddressFree,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemCreate,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemRelease,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemMap,
                                             CUPTI_DRIVER_TRACE_CBID_cuMemUnmap};
const size_t kMemoryCallbackCount = sizeof kMemoryCallbacks / sizeof kMemoryCallbacks[0];

}  // namespace mlfx::cupti
