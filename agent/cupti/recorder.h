// What the CUPTI callbacks report, recorded: the allocation table updated and one JSON line per
// event appended to the log (protocol/doc/cupti-allocations.md), CUDA errors rate-limited and
// sent to the daemon's anomaly socket. No CUDA headers: injection.cc translates the callbacks,
// the tests call it directly.
//
// Every method is safe from any thread, never throws, and never blocks for long: a mutex held
// for a map update and one write() of a line to a regular file; the anomaly notice is a
// non-blocking send.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "cupti/allocation_table.h"
#include "cupti/copy_out.h"
#include "cupti/cuda_errors.h"

namespace mlfx::cupti {

inline constexpr const char* kVersion = "0.1.0";

struct RecorderConfig {
  size_t max_entries = 65536;                   // per kind of entry (MLFX_CUPTI_MAX_RANGES)
  std::string log_path;                         // empty: no log (MLFX_CUPTI_LOG, %p expanded)
  uint64_t log_max_bytes = 256ull << 20;        // then only error, trigger, copy-out, notice lines
  std::string anomaly_socket;                   // empty: no notices
  uint64_t notice_interval_ns = 1'000'000'000;  // one anomaly message per second at most
  uint64_t error_line_interval_ns = 100'000'000;  // ten error lines per second at most
  std::function<uint64_t()> monotonic_ns;         // the clock of the rate limits (tests set it)
};

class Recorder {
 public:
  explicit Recorder(RecorderConfig config);
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // Why the log could not be opened; empty when it is open (or none was asked for).
  const std::string& log_error() const { return log_error_; }

  // The library's own state: "start" (pid, version, settings) and "notice" (what it could not do).
  void start(std::string_view settings_json);
  void notice(std::string_view what, std::string_view detail);

  // cuMemAlloc, cuMemAllocPitch (pitch: the row pitch; size = pitch * height), cuMemAllocManaged,
  // cuMemAllocAsync, cuMemAllocFromPoolAsync (pool: the CUmemoryPool).
  void alloc(std::string_view api, RangeKind kind, uint64_t address, uint64_t size,
             uint64_t context, uint64_t stream, uint64_t return_address, uint64_t pitch = 0,
             uint64_t pool = 0);
  void free(std::string_view api, uint64_t address, uint64_t context, uint64_t stream);
  void reserve(uint64_t address, uint64_t size, uint64_t context);  // cuMemAddressReserve
  void address_free(uint64_t address, uint64_t size);               // cuMemAddressFree
  void create(uint64_t handle, uint64_t size, int device);          // cuMemCreate
  void release(uint64_t handle);                                    // cuMemRelease
  void map(uint64_t address, uint64_t size, uint64_t offset, uint64_t handle, uint64_t context,
           uint64_t return_address);            // cuMemMap
  void unmap(uint64_t address, uint64_t size);  // cuMemUnmap
  void context_created(uint64_t context, int device);
  void context_destroyed(uint64_t context);

  // A CUDA call returned `code`: an error event (and anomaly notice) unless it is benign.
  // True when it was an error.
  bool result(std::string_view api, int code);

  void trigger(std::string_view source);
  void copy_out(const std::string& output, const CopyOutReport& report);

  AllocationTable& table() { return table_; }
  uint64_t error_events() const;
  uint64_t notices_sent() const;

 private:
  struct Line;  // an event being built: its seq and time already taken
  Line begin(std::string_view event);
  // Writes the line; `essential` lines are written past log_max_bytes.
  void write(Line& line, bool essential);

  RecorderConfig config_;
  AllocationTable table_;
  std::string log_error_;
  int log_fd_ = -1;
  mutable std::mutex mu_;  // seq order is file order: held from the seq to the write
  uint64_t seq_ = 0, log_bytes_ = 0, lines_dropped_ = 0;
  uint64_t errors_ = 0, notices_ = 0;
  RateLimiter error_lines_, notices_limit_;
};

// The settings of a Recorder, of the injection library: from the environment.
RecorderConfig config_from_env();

}  // namespace mlfx::cupti
