// CUDA GPU core dumps built per NVIDIA's public cudacoredump.h with the project's writer
// (mlfx/cudacore/writer.h), for the conformance tests of the analyzer's CUDA core layer and the
// cuda_core fuzz seeds: the row sizes of several driver revisions, extended section numbering,
// gzip (one member or several), filler sections like a real dump's per-lane registers.
#pragma once

#include <isa-l/igzip_lib.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "mlfx/cudacore/writer.h"

namespace mlfx::synthetic {

// Deterministic bytes: what a test expects to read back at a device address.
inline std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> out(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : out) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    b = static_cast<uint8_t>(x);
  }
  return out;
}

struct CudaMemory {
  uint64_t addr = 0;
  std::vector<uint8_t> bytes;
  bool managed = false;
};

struct CudaDumpSpec {
  uint32_t device_row = 88;  // 72 (r346), 80 (r400), 88 (r575), or a future size
  bool meta = true;          // drivers before r565 wrote none
  uint32_t flags = cudacore::kFlagSkipNonrelocatedElfImages;
  uint8_t abi_version = cudacore::kAbiVersion;
  bool extended = false;
  size_t filler_sections = 0;  // register sections of 16 bytes, as a dump has one per lane
  std::vector<CudaMemory> memory = {{0x7f0000000000, pattern(4096, 1)},
                                    {0x7f0000200000, pattern(1000, 2)},
                                    {0x7f4000000000, pattern(512, 3), true}};
};

inline cudacore::DeviceInfo synthetic_device(uint32_t row_size) {
  cudacore::DeviceInfo d;
  d.name = "NVIDIA H100 80GB HBM3", d.type = "GH100", d.sm_type = "sm_90";
  d.dev_id = 0, d.pci_bus_id = 0x19, d.pci_dev_id = 0, d.num_sms = 132, d.sm_major = 9, d.sm_minor = 0;
  d.row_size = row_size;
  return d;
}

inline std::string cuda_dump(const CudaDumpSpec& spec) {
  cudacore::CoreWriter w;
  w.set_extended_numbering(spec.extended);
  w.set_abi_version(spec.abi_version);
  if (spec.meta) {
    cudacore::MetaData m;
    m.generator = "synthetic driver 580.65.06", m.driver_major = 580, m.driver_minor = 65;
    m.cuda_major = 13, m.cuda_minor = 0, m.flags = spec.flags, m.timestamp = 1796601600;
    w.add_meta_data(m);
  }
  for (const CudaMemory& m : spec.memory) w.add_memory(m.addr, m.bytes, m.managed);
  const uint32_t devices = w.add_device_table({synthetic_device(spec.device_row)});
  cudacore::ContextInfo ctx;
  ctx.context_id = 0x5555deadbeef, ctx.global_window_base = 0, ctx.device_index = 0, ctx.tid = 4242;
  w.add_context_table(devices, 0, {ctx});
  for (size_t i = 0; i < spec.filler_sections; ++i) {
    cudacore::Section s;
    s.name = ".cudbg.regs.dev0.sm0.cta0.wp0.ln" + std::to_string(i);
    s.type = uint32_t(cudacore::SectionType::kDevRegs);
    s.data = pattern(16, static_cast<uint32_t>(i));
    w.add(std::move(s));
  }
  std::string out;
  std::string error;
  if (!w.write([&](const void* p, size_t n) { return out.append(static_cast<const char*>(p), n), true; }, &error))
    throw std::runtime_error("writing a synthetic CUDA dump: " + error);
  return out;
}

// gzip of `data` in `members` members (as `cat a.gz b.gz` makes), with ISA-L.
inline std::string gzip(std::string_view data, size_t members = 1) {
  std::string out;
  const size_t part = (data.size() + members - 1) / members;
  for (size_t start = 0; start < data.size(); start += part) {
    std::string_view piece = data.substr(start, part);
    std::vector<uint8_t> level_buf(ISAL_DEF_LVL1_DEFAULT);
    std::vector<uint8_t> buf(piece.size() + piece.size() / 2 + 1024);
    isal_zstream z;
    isal_deflate_init(&z);
    z.gzip_flag = IGZIP_GZIP;
    z.level = 1;
    z.level_buf = level_buf.data();
    z.level_buf_size = static_cast<uint32_t>(level_buf.size());
    z.end_of_stream = 1;
    z.flush = NO_FLUSH;
    z.next_in = reinterpret_cast<uint8_t*>(const_cast<char*>(piece.data()));
    z.avail_in = static_cast<uint32_t>(piece.size());
    z.next_out = buf.data();
    z.avail_out = static_cast<uint32_t>(buf.size());
    if (isal_deflate(&z) != COMP_OK || z.internal_state.state != ZSTATE_END)
      throw std::runtime_error("ISA-L deflate failed");
    out.append(reinterpret_cast<const char*>(buf.data()), z.total_out);
  }
  return out;
}

}  // namespace mlfx::synthetic
