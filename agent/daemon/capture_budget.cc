#include "daemon/capture_budget.h"

namespace mlfx::agent::daemon {

std::string human_duration(std::chrono::seconds s) {
  const int64_t n = s.count();
  if (n < 120) return std::to_string(n) + " s";
  if (n < 7200) return std::to_string(n / 60) + " min" + (n % 60 ? " " + std::to_string(n % 60) + " s" : "");
  if (n < 172800) return std::to_string(n / 3600) + " h" + (n % 3600 ? " " + std::to_string(n % 3600 / 60) + " min" : "");
  return std::to_string(n / 86400) + " d";
}

CaptureBudget::Decision CaptureBudget::admit(const std::string& key, const BudgetLimits& limits,
                                             Clock::time_point now) {
  History& h = history_[key];
  while (!h.admitted.empty() && now - h.admitted.front() >= limits.window) h.admitted.pop_front();
  Decision d;
  if (!h.admitted.empty() && now - h.admitted.back() < limits.cooldown) {
    auto left = std::chrono::ceil<std::chrono::seconds>(limits.cooldown - (now - h.admitted.back()));
    d.reason = "cooldown: " + human_duration(left) + " left of " + human_duration(limits.cooldown);
  } else if (h.admitted.size() >= limits.max_captures) {
    d.reason = std::to_string(h.admitted.size()) + " captures within " + human_duration(limits.window) +
               " (max_captures " + std::to_string(limits.max_captures) + ")";
  } else {
    d.allowed = true;
    h.admitted.push_back(now);
    return d;
  }
  ++h.suppressed;
  ++suppressed_total_;
  return d;
}

uint64_t CaptureBudget::suppressed(const std::string& key) const {
  auto it = history_.find(key);
  return it == history_.end() ? 0 : it->second.suppressed;
}

void CaptureBudget::reset_counters() {
  for (auto& [key, h] : history_) h.suppressed = 0;
  suppressed_total_ = 0;
}

}  // namespace mlfx::agent::daemon
