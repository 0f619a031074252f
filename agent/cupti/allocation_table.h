// The live device memory of a CUDA process as the CUPTI injection library sees it: allocations
// (cuMemAlloc, pitch, managed, async, pool) and VMM mappings (cuMemAddressReserve, cuMemCreate,
// cuMemMap), keyed by address. Pure bookkeeping, no CUDA headers, so it is unit-tested on
// machines without a GPU; injection.cc feeds it from the driver callbacks.
//
// Bounded: each kind of entry (ranges, reservations, physical handles, contexts) holds at most
// `max_entries`; what does not fit is counted (overflow), never stored. Thread-safe: one mutex,
// held only for the map operation (CUDA threads call in concurrently).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace mlfx::cupti {

enum class RangeKind { kDevice, kPitch, kManaged, kAsync, kPool, kVmm };
const char* range_kind_name(
    RangeKind kind);  // "device", "pitch", "managed", "async", "pool", "vmm"

// Where the allocation was asked for: the return address into the application's code and the
// object file mapped there (dladdr), with the address's offset from that object's load base.
struct CallSite {
  uint64_t return_address = 0;
  std::string object;   // empty when dladdr knows no object there
  uint64_t offset = 0;  // return_address - the object's load base
};
CallSite resolve_call_site(uint64_t return_address);

struct LiveRange {
  uint64_t address = 0, size = 0;
  RangeKind kind = RangeKind::kDevice;
  int device = -1;  // -1: unknown (the context was never seen)
  uint64_t context = 0, stream = 0;
  uint64_t handle = 0, handle_offset = 0;  // VMM: the physical allocation mapped, and where in it
  CallSite site;
  uint64_t seq = 0;      // the event sequence number of the allocation (or map)
  uint64_t time_ns = 0;  // CLOCK_REALTIME
};

struct Reservation {  // cuMemAddressReserve: a VA range, no memory behind it until mapped
  uint64_t address = 0, size = 0, seq = 0;
};
struct PhysicalHandle {  // cuMemCreate: physical memory, reachable once mapped
  uint64_t handle = 0, size = 0, seq = 0;
  int device = -1;
};
struct ContextInfoRecord {
  uint64_t context = 0;
  int device = -1;
  uint64_t seq = 0;
};

struct TableStats {
  uint64_t ranges = 0, bytes = 0, reservations = 0, handles = 0, contexts = 0;
  uint64_t overflow = 0;  // entries not stored because the table was full
};

class AllocationTable {
 public:
  explicit AllocationTable(size_t max_entries) : max_entries_(max_entries) {}

  // Results of the updates, for the event log.
  struct Added {
    bool tracked = false;   // false: the table is full (counted as overflow)
    bool replaced = false;  // a live range already started there (its free was never seen)
  };
  struct Removed {
    bool found = false;
    LiveRange range;  // when found
  };

  Added add_range(const LiveRange& range);
  Removed remove_range(uint64_t address);  // cuMemFree, cuMemFreeAsync

  Added add_reservation(const Reservation& r);
  bool remove_reservation(uint64_t address);  // cuMemAddressFree
  Added add_handle(const PhysicalHandle& h);
  bool remove_handle(uint64_t handle);  // cuMemRelease (its mappings stay until unmapped)
  std::optional<PhysicalHandle> handle(uint64_t handle) const;
  // cuMemUnmap(ptr, size): every VMM range overlapping [address, address + size); how many.
  size_t remove_mapped(uint64_t address, uint64_t size);

  Added add_context(const ContextInfoRecord& c);
  // A destroyed context: drops it and its ranges; returns how many ranges went with it.
  size_t remove_context(uint64_t context);
  int device_of(uint64_t context) const;  // -1 when unknown

  std::vector<LiveRange> ranges() const;  // by address
  std::vector<ContextInfoRecord> contexts() const;
  TableStats stats() const;

 private:
  bool full(size_t n) const { return n >= max_entries_; }
  size_t max_entries_;
  mutable std::mutex mu_;
  std::map<uint64_t, LiveRange> ranges_;
  std::map<uint64_t, Reservation> reservations_;
  std::unordered_map<uint64_t, PhysicalHandle> handles_;
  std::map<uint64_t, ContextInfoRecord> contexts_;
  uint64_t bytes_ = 0, overflow_ = 0;
};

}  // namespace mlfx::cupti
