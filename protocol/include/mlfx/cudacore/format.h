// The CUDA GPU core dump, as NVIDIA's public cudacoredump.h describes it: an ELF64 LSB core
// (OS ABI 0x33, machine EM_CUDA 0xBE) made of sections. Global and managed memory are sections
// whose sh_addr is the device address of their first byte; tables are arrays of rows whose
// size grows with the driver (read with sh_entsize as the stride, fields past it as zero);
// string fields index the ".strtab" section. Written by the driver (or cuda-gdb), by the CUPTI
// copy-out of agent/cupti, and by the tests; read by the analyzer (analyzer/layers/cuda_core_layer.h).
// Nothing here depends on the rest of mlfx: the CUPTI library links it into a CUDA process.
#pragma once

#include <cstdint>

namespace mlfx::cudacore {

inline constexpr uint8_t kOsAbi = 0x33;      // ELFOSABI_CUDA
inline constexpr uint8_t kAbiVersion = 7;    // ELFOSABIV_LATEST of libcudacore; others are read too
inline constexpr uint16_t kMachine = 0xBE;   // EM_CUDA

// CudbgSectionHeaderTypes: SHT_LOUSER + n.
enum class SectionType : uint32_t {
  kManagedMem = 0x80000001,
  kGlobalMem = 0x80000002,
  kLocalMem = 0x80000003,
  kSharedMem = 0x80000004,
  kDevRegs = 0x80000005,
  kElfImage = 0x80000006,
  kRelocatedElfImage = 0x80000007,
  kBacktrace = 0x80000008,
  kDeviceTable = 0x80000009,
  kContextTable = 0x8000000a,
  kSmTable = 0x8000000b,
  kGridTable = 0x8000000c,
  kCtaTable = 0x8000000d,
  kWarpTable = 0x8000000e,
  kLaneTable = 0x8000000f,
  kModuleTable = 0x80000010,
  kDevPredicates = 0x80000011,
  kParamMem = 0x80000012,
  kUniformRegs = 0x80000013,     // r400
  kUniformPredicates = 0x80000014,
  kConstBankTable = 0x80000015,  // r550
  kMetaData = 0x80000016,        // r565
  kCbuBarriers = 0x80000017,     // r575
};

// mlfx's own section, not NVIDIA's: where the CUPTI copy-out could not read device memory and
// wrote zeros instead, so that a reader never takes those zeros for the device's bytes. Rows of
// {u64 address, u64 size}; rows of size 0 are padding (the table is sized before the copy).
inline constexpr uint32_t kUnreadableType = 0x8000ff01;
inline constexpr const char* kUnreadableName = ".mlfx.unreadable";
struct UnreadableRow {
  static constexpr uint32_t kSize = 16;
  static constexpr uint32_t address = 0, size = 8;
};

// Section names (global memory: ".cudbg.global.<index>"; context table: ".cudbg.ctxtbl.dev<index>").
inline constexpr const char* kGlobalPrefix = ".cudbg.global";
inline constexpr const char* kDeviceTableName = ".cudbg.devtbl";
inline constexpr const char* kContextTablePrefix = ".cudbg.ctxtbl";
inline constexpr const char* kMetaDataName = ".cudbg.meta";
inline constexpr const char* kStringTableName = ".strtab";

// Table rows: byte offsets of the fields the analyzer reads, and the row sizes drivers wrote.
// A reader takes sh_entsize as the row size and reads a field past it as 0.
struct DeviceRow {  // CudbgDeviceTableEntry: 72 bytes (r346), 80 (r400), 88 (r575)
  static constexpr uint32_t kSizes[] = {72, 80, 88};
  static constexpr uint32_t dev_name = 0, dev_type = 8, sm_type = 16;  // u64 string indexes
  static constexpr uint32_t dev_id = 24, pci_bus_id = 28, pci_dev_id = 32, num_sms = 36;  // u32
  static constexpr uint32_t sm_major = 56, sm_minor = 60, status = 68;                     // u32
};
struct ContextRow {  // CudbgContextTableEntry: 40 bytes
  static constexpr uint32_t kSizes[] = {40};
  static constexpr uint32_t context_id = 0, global_window_base = 24;  // u64
  static constexpr uint32_t device_index = 32, tid = 36;              // u32
};
struct MetaDataRow {  // CudbgMetaDataEntry: 32 bytes (r565)
  static constexpr uint32_t kSizes[] = {32};
  static constexpr uint32_t generator_name = 0;  // u64 string index
  static constexpr uint32_t driver_major = 8, driver_minor = 12, cuda_major = 16, cuda_minor = 20;
  static constexpr uint32_t flags = 24, timestamp = 28;  // u32
};

// CUDBGCoredumpGenerationFlags, as the metadata row records them.
inline constexpr uint32_t kFlagSkipNonrelocatedElfImages = 1u << 0;
inline constexpr uint32_t kFlagSkipGlobalMemory = 1u << 1;
inline constexpr uint32_t kFlagSkipSharedMemory = 1u << 2;
inline constexpr uint32_t kFlagSkipLocalMemory = 1u << 3;
inline constexpr uint32_t kFlagSkipConstbankMemory = 1u << 5;
inline constexpr uint32_t kFlagGzipCompress = 1u << 6;

}  // namespace mlfx::cudacore
