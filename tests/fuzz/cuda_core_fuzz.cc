// Fuzzes the CUDA GPU core dump layer (analyzer/layers/cuda_core_layer.h).
//
// The input is a whole GPU core dump, raw or gzip-compressed, written to a memfd and opened by
// path with FileLayer as recovery opens the bundle's "gpu-core" stream, then parsed with an
// inflate limit of 16 MiB. On success the layer's segments keep the invariants of every
// segmented layer (segment_checks.h), every device, context and metadata string is bounded,
// and the counted memory equals the segments' plus what an .mlfx.unreadable table took out.
#include <cstdint>
#include <string>

#include "fuzz_support.h"
#include "layers/cuda_core_layer.h"
#include "layers/file_layer.h"
#include "segment_checks.h"

namespace {

using namespace mlfx;

void run(const std::string& path) {
  auto file = layers::FileLayer::open(path);
  if (!file) fuzz::invariant_failed("FileLayer opens the memfd", file.error().to_string());
  std::shared_ptr<const layers::Layer> f = std::move(*file);
  (void)layers::CudaCoreLayer::probe(*f);
  auto opened = layers::CudaCoreLayer::open(f, 16u << 20);
  if (!opened) return;
  const layers::CudaCoreLayer& core = **opened;
  fuzz::check_segments(core);
  const layers::CudaCoreInfo& info = core.info();
  uint64_t bytes = 0;
  for (const layers::Segment& s : core.segments()) bytes += s.size;
  // The sections' bytes, less what an .mlfx.unreadable table took out.
  if (bytes + info.unreadable_bytes != info.global_bytes + info.managed_bytes)
    fuzz::invariant_failed("the counted memory is the segments'", std::to_string(bytes));
  for (const layers::CudaDevice& d : info.devices)
    if (d.name.size() > 4096 || d.type.size() > 4096 || d.sm_type.size() > 4096)
      fuzz::invariant_failed("device strings are bounded", d.name.substr(0, 64));
  if (info.meta && info.meta->generator.size() > 4096) fuzz::invariant_failed("the generator name is bounded", "");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run(fuzz::input_as_file(data, size));
  return 0;
}
