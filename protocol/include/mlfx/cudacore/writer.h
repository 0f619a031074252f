// Writes a CUDA GPU core dump (format.h) in one forward pass, so that it can stream into a pipe:
// every offset is planned from the declared sizes before the first byte goes out, and memory
// sections produce their bytes while they are written, never held whole. The agent's CUPTI
// copy-out writes its dumps with it, and the tests build conformance dumps of several driver
// revisions. Dependency-free (only the C++ library and <elf.h>): it runs inside CUDA processes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mlfx/cudacore/format.h"

namespace mlfx::cudacore {

// Takes the next `len` bytes of the dump; false stops the writing (the sink says why).
using Sink = std::function<bool(const void* data, size_t len)>;

struct Section {
  std::string name;
  uint32_t type = 0;  // a SectionType, or a standard ELF type
  uint64_t addr = 0, entsize = 0;
  uint32_t link = 0, info = 0;
  uint64_t size = 0;          // bytes; data.size() when `produce` is empty
  std::vector<uint8_t> data;  // the bytes of a small section
  // The bytes of a large one: passes exactly `size` bytes to `emit` (in any pieces), false
  // on failure (with a reason in *error).
  std::function<bool(const Sink& emit, std::string* error)> produce;
};

struct DeviceInfo {  // one row of the device table
  std::string name, type, sm_type;  // "NVIDIA H100 80GB HBM3", "GH100", "sm_90"
  uint32_t dev_id = 0, pci_bus_id = 0, pci_dev_id = 0, num_sms = 0, sm_major = 0, sm_minor = 0;
  uint32_t row_size = DeviceRow::kSizes[2];  // what the driver writes: 72, 80 or 88
};
struct ContextInfo {  // one row of a device's context table
  uint64_t context_id = 0, global_window_base = 0;
  uint32_t device_index = 0, tid = 0;
};
struct MetaData {
  std::string generator;  // "mlfx-cupti 0.1.0", a driver's own name
  uint32_t driver_major = 0, driver_minor = 0, cuda_major = 0, cuda_minor = 0, flags = 0, timestamp = 0;
};

class CoreWriter {
 public:
  // Adds a string to .strtab; returns its index there (what table fields hold).
  uint64_t add_string(std::string_view s);
  // Adds a section; returns its section header index.
  uint32_t add(Section section);

  uint32_t add_meta_data(const MetaData& meta);
  uint32_t add_device_table(const std::vector<DeviceInfo>& devices);
  uint32_t add_context_table(uint32_t device_table, uint32_t device_index, const std::vector<ContextInfo>& contexts);
  // Global (or managed) memory at device address `addr`: ".cudbg.global.<n>", n counting up.
  uint32_t add_memory(uint64_t addr, std::vector<uint8_t> bytes, bool managed = false);
  uint32_t add_memory(uint64_t addr, uint64_t size, std::function<bool(const Sink&, std::string*)> produce,
                      bool managed = false);

  // The .mlfx.unreadable table (format.h) with room for `capacity` rows, filled when it is
  // written, after every section added before it: `rows()` then says which ranges were
  // zero-filled (at most `capacity`).
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  uint32_t add_unreadable_table(size_t capacity, std::function<Ranges()> rows);

  // Counts sections and names the string table through section 0 (e_shnum 0, e_shstrndx
  // SHN_XINDEX), as a driver must past 0xff00 sections; done then anyway.
  void set_extended_numbering(bool on) { extended_ = on; }
  // The abi version byte (7 today; older drivers wrote others).
  void set_abi_version(uint8_t v) { abi_version_ = v; }

  // The size of the whole dump.
  uint64_t total_size() const;
  // Writes the dump: ELF header, section data, .shstrtab, .strtab, section headers.
  bool write(const Sink& sink, std::string* error) const;

 private:
  struct Plan;
  Plan plan() const;
  std::vector<Section> sections_;
  std::string strtab_{'\0'};
  uint32_t memory_sections_ = 0;
  bool extended_ = false;
  uint8_t abi_version_ = kAbiVersion;
};

}  // namespace mlfx::cudacore
