// Damage is data: walkers record what they had to skip and carry on (leveldb's Reporter).
// Hostile memory is bounded here too: what the analysis keeps (decoded strings, types,
// modules, tracked objects) is charged against a memory budget, and every walk checks one
// deadline. A charge that does not fit is refused (the walk that asked stops there, with a
// diagnostic); a passed deadline stops every walk. Never an abort.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlfx {

// Errors made because a budget was spent start with this: walks stop on them (instead of
// skipping one object and trying the next).
inline constexpr std::string_view kBudgetSpent = "analysis budget spent: ";
inline bool budget_spent(const std::string& message) { return message.rfind(kBudgetSpent, 0) == 0; }

// What one analysis may spend. The memory budget counts what the walks keep, not the image
// (mapped, not read into memory) nor the exported tensor bytes (streamed to disk).
struct Limits {
  uint64_t memory_bytes = uint64_t{768} << 20;
  double seconds = 1800;
};

class Diagnostics {
 public:
  Diagnostics() : Diagnostics(Limits{}) {}
  explicit Diagnostics(Limits limits)
      : limits_(limits),
        deadline_(std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::chrono::duration<double>(limits.seconds))) {}

  // Messages quote names from the image: each is cut to kMaxMessage bytes.
  void warn(std::string message) {
    if (message.size() > kMaxMessage) message = message.substr(0, kMaxMessage) + "... (cut)";
    if (warnings_.size() < kMax) warnings_.push_back(std::move(message));
    else ++dropped_;
  }
  const std::vector<std::string>& warnings() const { return warnings_; }
  size_t dropped() const { return dropped_; }

  // Charges `bytes` that the analysis keeps while doing `what`, leaving `keep_free` of the
  // budget for later stages (the module scan leaves room to export what it found). False when
  // they do not fit, or past the deadline; the first failure is what report.json names.
  bool spend(uint64_t bytes, std::string_view what, uint64_t keep_free = 0) {
    if (!in_time(what)) return false;
    if (keep_free > limits_.memory_bytes || bytes > limits_.memory_bytes - keep_free - spent_ ||
        spent_ > limits_.memory_bytes - keep_free) {
      exhaust("memory budget of " + std::to_string(limits_.memory_bytes >> 20) + " MiB for the analysis spent while " +
              std::string(what));
      return false;
    }
    spent_ += bytes;
    return true;
  }
  // Returns bytes charged for something no longer kept.
  void refund(uint64_t bytes) { spent_ -= bytes < spent_ ? bytes : spent_; }
  // False once the deadline has passed (the clock is read every 64 calls).
  bool in_time(std::string_view what) {
    if (late_) return false;
    if (++calls_ % 64 != 0 || std::chrono::steady_clock::now() < deadline_) return true;
    late_ = true;
    exhaust("time budget of " + std::to_string(static_cast<long long>(limits_.seconds)) + " s spent while " +
            std::string(what));
    return false;
  }
  // Empty while within budget; else the first budget spent, and where.
  const std::string& exhausted() const { return exhausted_; }
  const Limits& limits() const { return limits_; }
  // The share that walks which grow with the image (GC lists, strings, modules) leave free,
  // so that what they found can still be exported.
  uint64_t reserve() const { return limits_.memory_bytes / 8; }
  uint64_t spent() const { return spent_; }

 private:
  void exhaust(std::string reason) {
    if (!exhausted_.empty()) return;
    exhausted_ = std::move(reason);
    warn("analysis stopped early: " + exhausted_ + "; results are partial (rerun with a larger --memory-limit or "
         "--time-limit to go further)");
  }

  static constexpr size_t kMax = 1000;  // a hostile image must not grow the report without bound
  static constexpr size_t kMaxMessage = 1024;
  Limits limits_;
  std::chrono::steady_clock::time_point deadline_;
  std::vector<std::string> warnings_;
  size_t dropped_ = 0;
  uint64_t spent_ = 0, calls_ = 0;
  bool late_ = false;
  std::string exhausted_;
};

}  // namespace mlfx
