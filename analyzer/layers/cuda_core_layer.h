// The device address space of a CUDA GPU core dump (protocol: mlfx/cudacore/format.h, NVIDIA's
// public cudacoredump.h): its global and managed memory sections, each at its device address
// (sh_addr), become the layer's segments; the device, context and metadata tables describe the
// GPU and the driver that wrote it. Whatever wrote the dump (the driver, cuda-gdb, the agent's
// CUPTI copy-out), every offset, size and count in it is checked against the file first.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/process_image.h"
#include "layers/segmented_layer.h"

namespace mlfx::layers {

struct CudaDevice {  // a row of the device table
  std::string name, type, sm_type;
  uint32_t dev_id = 0, pci_bus_id = 0, pci_dev_id = 0, num_sms = 0, sm_major = 0, sm_minor = 0;
};
struct CudaContext {  // a row of a context table
  uint64_t id = 0, global_window_base = 0;
  uint32_t device_index = 0, tid = 0;
};
struct CudaMetaData {  // the metadata row (drivers r565 and later)
  std::string generator;
  uint32_t driver_major = 0, driver_minor = 0, cuda_major = 0, cuda_minor = 0, flags = 0, timestamp = 0;
};

struct CudaCoreInfo {
  uint8_t abi_version = 0;
  bool extended_numbering = false;  // section count and name table given through section 0
  bool gzip = false;                // the evidence is gzip-compressed (gzip_compress)
  uint64_t sections = 0;
  uint32_t device_row_size = 0;     // sh_entsize of the device table: 72, 80, 88 by driver
  std::vector<CudaDevice> devices;
  std::vector<CudaContext> contexts;
  std::optional<CudaMetaData> meta;
  uint64_t global_sections = 0, global_bytes = 0, managed_sections = 0, managed_bytes = 0;
  uint64_t unreadable_bytes = 0;  // listed in .mlfx.unreadable (zeros in the file): not in the layer
  std::vector<std::string> warnings;

  // Whether the dump says global memory was left out (skip_global_memory).
  bool global_memory_skipped() const;
};

class CudaCoreLayer : public SegmentedLayer {
 public:
  // Cheap probe: an ELF core for EM_CUDA, or a gzip stream (which may hold one).
  static bool probe(const Layer& file);
  // Opens a dump; a gzip-compressed one is inflated first into an in-memory file of at most
  // `max_inflated` bytes (a larger one is refused: say so, never fill the lab's memory).
  static Result<std::unique_ptr<CudaCoreLayer>> open(std::shared_ptr<const Layer> file, uint64_t max_inflated);
  const CudaCoreInfo& info() const { return info_; }

 private:
  CudaCoreLayer() = default;
  struct SectionRef;
  Status parse(std::shared_ptr<const Layer> elf);
  Status remove_unreadable(std::vector<Segment>& segments, const std::vector<SectionRef>& tables, const Layer& file);
  CudaCoreInfo info_;
};

}  // namespace mlfx::layers
