#include "cupti/allocation_table.h"

#include <dlfcn.h>

namespace mlfx::cupti {

const char* range_kind_name(RangeKind kind) {
  switch (kind) {
    case RangeKind::kDevice:
      return "device";
    case RangeKind::kPitch:
      return "pitch";
    case RangeKind::kManaged:
      return "managed";
    case RangeKind::kAsync:
      return "async";
    case RangeKind::kPool:
      return "pool";
    case RangeKind::kVmm:
      return "vmm";
  }
  return "unknown";
}

CallSite resolve_call_site(uint64_t return_address) {
  CallSite site;
  site.return_address = return_address;
  Dl_info info{};
  if (return_address != 0 && ::dladdr(reinterpret_cast<void*>(return_address), &info) != 0) {
    if (info.dli_fname) site.object = info.dli_fname;
    site.offset = return_address - reinterpret_cast<uint64_t>(info.dli_fbase);
  }
  return site;
}

AllocationTable::Added AllocationTable::add_range(const LiveRange& range) {
  std::lock_guard lock(mu_);
  Added added;
  auto it = ranges_.find(range.address);
  if (it != ranges_.end()) {  // the address was handed out again: its free went unseen
    bytes_ -= it->second.size;
    ranges_.erase(it);
    added.replaced = true;
  }
  if (full(ranges_.size())) {
    ++overflow_;
    return added;
  }
  ranges_.emplace(range.address, range);
  bytes_ += range.size;
  added.tracked = true;
  return added;
}

AllocationTable::Removed AllocationTable::remove_range(uint64_t address) {
  std::lock_guard lock(mu_);
  Removed removed;
  auto it = ranges_.find(address);
  if (it == ranges_.end()) return removed;
  removed.found = true;
  removed.range = std::move(it->second);
  bytes_ -= removed.range.size;
  ranges_.erase(it);
  return removed;
}

AllocationTable::Added AllocationTable::add_reservation(const Reservation& r) {
  std::lock_guard lock(mu_);
  Added added;
  added.replaced = reservations_.erase(r.address) > 0;
  if (full(reservations_.size())) {
    ++overflow_;
    return added;
  }
  reservations_.emplace(r.address, r);
  added.tracked = true;
  return added;
}

bool AllocationTable::remove_reservation(uint64_t address) {
  std::lock_guard lock(mu_);
  return reservations_.erase(address) > 0;
}

AllocationTable::Added AllocationTable::add_handle(const PhysicalHandle& h) {
  std::lock_guard lock(mu_);
  Added added;
  added.replaced = handles_.erase(h.handle) > 0;
  if (full(handles_.size())) {
    ++overflow_;
    return added;
  }
  handles_.emplace(h.handle, h);
  added.tracked = true;
  return added;
}

bool AllocationTable::remove_handle(uint64_t handle) {
  std::lock_guard lock(mu_);
  return handles_.erase(handle) > 0;
}

std::optional<PhysicalHandle> AllocationTable::handle(uint64_t handle) const {
  std::lock_guard lock(mu_);
  auto it = handles_.find(handle);
  if (it == handles_.end()) return std::nullopt;
  return it->second;
}

size_t AllocationTable::remove_mapped(uint64_t address, uint64_t size) {
  std::lock_guard lock(mu_);
  const uint64_t end = address + size;
  // Ranges do not overlap each other, so only the one starting before `address` and those
  // starting inside [address, end) can overlap.
  auto it = ranges_.lower_bound(address);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second.size > address) it = prev;
  }
  size_t removed = 0;
  while (it != ranges_.end() && it->first < end) {
    if (it->second.kind != RangeKind::kVmm) {
      ++it;
      continue;
    }
    bytes_ -= it->second.size;
    it = ranges_.erase(it);
    ++removed;
  }
  return removed;
}

AllocationTable::Added AllocationTable::add_context(const ContextInfoRecord& c) {
  std::lock_guard lock(mu_);
  Added added;
  added.replaced = contexts_.erase(c.context) > 0;
  if (full(contexts_.size())) {
    ++overflow_;
    return added;
  }
  contexts_.emplace(c.context, c);
  added.tracked = true;
  return added;
}

size_t AllocationTable::remove_context(uint64_t context) {
  std::lock_guard lock(mu_);
  contexts_.erase(context);
  size_t removed = 0;
  for (auto it = ranges_.begin(); it != ranges_.end();) {
    if (it->second.context == context) {
      bytes_ -= it->second.size;
      it = ranges_.erase(it);
      ++removed;
    } else {
      ++it;
    }
  }
  return removed;
}

int AllocationTable::device_of(uint64_t context) const {
  std::lock_guard lock(mu_);
  auto it = contexts_.find(context);
  return it == contexts_.end() ? -1 : it->second.device;
}

std::vector<LiveRange> AllocationTable::ranges() const {
  std::lock_guard lock(mu_);
  std::vector<LiveRange> out;
  out.reserve(ranges_.size());
  for (const auto& [address, range] : ranges_) out.push_back(range);
  return out;
}

std::vector<ContextInfoRecord> AllocationTable::contexts() const {
  std::lock_guard lock(mu_);
  std::vector<ContextInfoRecord> out;
  for (const auto& [id, c] : contexts_) out.push_back(c);
  return out;
}

TableStats AllocationTable::stats() const {
  std::lock_guard lock(mu_);
  return TableStats{ranges_.size(),  bytes_,           reservations_.size(),
                    handles_.size(), contexts_.size(), overflow_};
}

}  // namespace mlfx::cupti
