// Damage is data: walkers record what they had to skip and carry on (leveldb's Reporter).
#pragma once

#include <string>
#include <vector>

namespace mlfx {

class Diagnostics {
 public:
  void warn(std::string message) {
    if (warnings_.size() < kMax) warnings_.push_back(std::move(message));
    else ++dropped_;
  }
  const std::vector<std::string>& warnings() const { return warnings_; }
  size_t dropped() const { return dropped_; }

 private:
  static constexpr size_t kMax = 1000;  // a hostile image must not grow the report without bound
  std::vector<std::string> warnings_;
  size_t dropped_ = 0;
};

}  // namespace mlfx
