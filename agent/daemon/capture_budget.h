// How many captures triggers may cause: at most `max_captures` per rule and target within a
// sliding window, and a cooldown between two. A trigger storm (a crash loop, a thousand ptrace
// attempts a second) therefore yields a bounded number of captures; what was held back is
// counted and reported (status, logs), never silently dropped.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <string>

namespace mlfx::agent::daemon {

struct BudgetLimits {
  uint32_t max_captures = 3;
  std::chrono::seconds window{3600};
  std::chrono::seconds cooldown{60};
};

class CaptureBudget {
 public:
  using Clock = std::chrono::steady_clock;
  struct Decision {
    bool allowed = false;
    std::string reason;  // why not: "cooldown: 41 s left", "3 captures within 1h (max_captures 3)"
  };
  // Admits one capture for `key` (rule/target) now, or says why not and counts it.
  Decision admit(const std::string& key, const BudgetLimits& limits, Clock::time_point now);
  // Triggers held back for `key` since it was created (or the configuration reloaded).
  uint64_t suppressed(const std::string& key) const;
  uint64_t suppressed_total() const { return suppressed_total_; }
  // A reload keeps the history (a reload is no way around a limit) but not its counters.
  void reset_counters();

 private:
  struct History {
    std::deque<Clock::time_point> admitted;  // within the longest window seen
    uint64_t suppressed = 0;
  };
  std::map<std::string, History> history_;
  uint64_t suppressed_total_ = 0;
};

// "41 s", "5 min", "1 h 30 min": for messages.
std::string human_duration(std::chrono::seconds s);

}  // namespace mlfx::agent::daemon
