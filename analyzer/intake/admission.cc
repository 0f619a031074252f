#include "intake/admission.h"

#include <algorithm>

namespace mlfx::intake {

std::deque<PendingHandshakes::Entry>* PendingHandshakes::victim(const std::string& address) {
  auto own = by_address_.find(address);
  if (own != by_address_.end() && own->second.size() >= max_per_address_) return &own->second;
  if (total_ < max_total_) return nullptr;
  std::deque<Entry>* busiest = nullptr;
  for (auto& [addr, q] : by_address_)
    if (!q.empty() && (!busiest || q.size() > busiest->size() ||
                       (q.size() == busiest->size() && q.front().ticket < busiest->front().ticket)))
      busiest = &q;
  return busiest;
}

uint64_t PendingHandshakes::admit(const std::string& address, Evict evict) {
  Evict evicted;
  uint64_t ticket;
  {
    std::lock_guard lock(mu_);
    if (std::deque<Entry>* q = victim(address); q && !q->empty()) {
      evicted = std::move(q->front().evict);
      q->pop_front();
      --total_;
    }
    ticket = next_ticket_++;
    by_address_[address].push_back({ticket, std::move(evict)});
    ++total_;
    std::erase_if(by_address_, [](const auto& kv) { return kv.second.empty(); });
  }
  if (evicted) evicted();
  return ticket;
}

void PendingHandshakes::leave(const std::string& address, uint64_t ticket) {
  std::lock_guard lock(mu_);
  auto it = by_address_.find(address);
  if (it == by_address_.end()) return;  // evicted meanwhile
  auto& q = it->second;
  auto e = std::find_if(q.begin(), q.end(), [&](const Entry& x) { return x.ticket == ticket; });
  if (e == q.end()) return;
  q.erase(e);
  --total_;
  if (q.empty()) by_address_.erase(it);
}

size_t PendingHandshakes::size() const {
  std::lock_guard lock(mu_);
  return total_;
}

std::string SessionSlots::take(const std::string& device) {
  std::lock_guard lock(mu_);
  if (total_ >= max_total_) return "connection limit";
  size_t& mine = by_device_[device];
  if (mine >= max_per_device_) return "device session limit";
  ++mine;
  ++total_;
  return "";
}

void SessionSlots::give_back(const std::string& device) {
  std::lock_guard lock(mu_);
  auto it = by_device_.find(device);
  if (it == by_device_.end() || it->second == 0) return;
  --total_;
  if (--it->second == 0) by_device_.erase(it);
}

bool MemoryBudget::change(const std::string& device, uint64_t from, uint64_t to) {
  std::lock_guard lock(mu_);
  uint64_t& mine = by_device_[device];
  const uint64_t device_after = mine - std::min(mine, from) + to;
  const uint64_t total_after = total_ - std::min(total_, from) + to;
  if (to > from && (device_after > device_limit_ || total_after > total_limit_)) {
    if (mine == 0) by_device_.erase(device);
    return false;
  }
  mine = device_after;
  total_ = total_after;
  if (mine == 0) by_device_.erase(device);
  return true;
}

}  // namespace mlfx::intake
