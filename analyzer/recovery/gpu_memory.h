// The GPU half of a recovery: the CUDA core dump beside the process image (the bundle's
// "gpu-core" stream, or --gpu-core FILE beside a bare ELF core) and where each tensor's bytes
// are read from. CUDA uses one virtual address space for host and device (UVA), so a CUDA
// storage's data pointer is looked up in the dump's memory sections; where the dump lacks it but
// the process image maps it (managed memory; Jetson, where host and GPU share DRAM and CUDA
// buffers may be mapped in the process), the process image's bytes are used and counted apart.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "evidence/bundle_check.h"
#include "frontends/torch/tensor_reader.h"
#include "layers/cuda_core_layer.h"
#include "mlfx/base/json.h"

namespace mlfx::recovery {

struct GpuEvidence {
  std::shared_ptr<const layers::CudaCoreLayer> dump;
  json::Json description;         // report.json "gpu.dump"
  std::optional<int32_t> pid;     // the process it was taken of, when the capture context says
};

// The GPU dump of a bundle's "gpu-core" stream (with "gpu-context" for its pid), or of the
// file at `path`; nullopt when there is none.
Result<std::optional<GpuEvidence>> open_gpu_evidence(const evidence::DecryptedStreams* bundle, const std::string& path);

// Routes each tensor's storage to the layer that holds its bytes, and keeps the counts that
// report.json "gpu" gives: CUDA tensors read from the dump or from the process image, missing,
// and whether each CUDA storage is one allocation of the dump (the caching allocator hands out
// 512-byte aligned blocks inside cudaMalloc'd segments: a storage spanning two of the dump's
// sections, or misaligned, contradicts the allocator's view).
class TensorMemory {
 public:
  TensorMemory(const layers::Layer& host, const GpuEvidence* gpu) : host_(host), gpu_(gpu) {}

  // The layer holding [data, data+bytes) of a tensor on `device_type`, or why none does.
  Result<const layers::Layer*> layer_for(const frontends::torch::TensorInfo& t);
  // Each CUDA storage once: its place among the dump's sections.
  void check_storage(const frontends::torch::TensorInfo& t);

  json::Json report() const;  // report.json "gpu"

 private:
  const layers::Layer& host_;
  const GpuEvidence* gpu_;
  uint64_t cuda_tensors_ = 0, from_dump_ = 0, from_process_image_ = 0, missing_ = 0;
  uint64_t storages_ = 0, in_one_section_ = 0, spanning_ = 0, outside_ = 0, misaligned_ = 0;
  std::set<uint64_t> checked_storages_;
  std::set<uint64_t> sections_used_;  // start addresses of dump sections holding a storage
};

// "cuda:0", "cpu", or "device type N:I".
std::string device_name(const frontends::torch::TensorInfo& t);

}  // namespace mlfx::recovery
