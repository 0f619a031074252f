// What peers may hold of the intake at once (wire-protocol.md §9): connections that have not
// authenticated yet, sessions, and memory for uploads in progress. Thread-safe; shared by all
// connections of one server.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>

namespace mlfx::intake {

// Connections before their TLS handshake is done, by source address, oldest first. A new
// connection always gets in: when its address, or the whole table, is full, the oldest
// connection of that address (of the busiest address) makes room and is told through its
// evict callback. So an anonymous flood displaces itself, not a client from another address.
class PendingHandshakes {
 public:
  using Evict = std::function<void()>;
  PendingHandshakes(size_t max_total, size_t max_per_address) : max_total_(max_total), max_per_address_(max_per_address) {}
  // Registers a connection; returns its ticket for leave().
  uint64_t admit(const std::string& address, Evict evict);
  void leave(const std::string& address, uint64_t ticket);
  size_t size() const;

 private:
  struct Entry {
    uint64_t ticket;
    Evict evict;
  };
  std::deque<Entry>* victim(const std::string& address);  // with mu_ held

  mutable std::mutex mu_;
  std::map<std::string, std::deque<Entry>> by_address_;
  size_t total_ = 0;
  uint64_t next_ticket_ = 0;
  const size_t max_total_, max_per_address_;
};

// Authenticated sessions: so many at once, so many per device key.
class SessionSlots {
 public:
  SessionSlots(size_t max_total, size_t max_per_device) : max_total_(max_total), max_per_device_(max_per_device) {}
  // "" when a slot was taken for `device`; else why not.
  std::string take(const std::string& device);
  void give_back(const std::string& device);

 private:
  std::mutex mu_;
  std::map<std::string, size_t> by_device_;
  size_t total_ = 0;
  const size_t max_total_, max_per_device_;
};

// Bytes of record buffers that uploads in progress may hold, in total and per device. A
// session takes what its state may need before it reads a record (IntakeSession).
class MemoryBudget {
 public:
  MemoryBudget(uint64_t total, uint64_t per_device) : total_limit_(total), device_limit_(per_device) {}
  // Moves `device`'s holding from `from` to `to` bytes; false, and nothing changes, when `to`
  // would pass a limit.
  bool change(const std::string& device, uint64_t from, uint64_t to);
  uint64_t limit() const { return total_limit_; }
  uint64_t device_limit() const { return device_limit_; }

 private:
  std::mutex mu_;
  std::map<std::string, uint64_t> by_device_;
  uint64_t total_ = 0;
  const uint64_t total_limit_, device_limit_;
};

}  // namespace mlfx::intake
