// A progress bar on stderr for long operations, drawn only when stderr is a terminal.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mlfx {

// "1.5 GiB": sizes for people, in binary units.
std::string human_bytes(double bytes);

class Progress {
 public:
  // total == 0 means unknown (a pipe): shows bytes and rate without a bar.
  Progress(std::string label, uint64_t total);
  // Counts things instead of bytes: "3/10 classes".
  Progress(std::string label, uint64_t total, std::string unit) : Progress(std::move(label), total) { unit_ = std::move(unit); }
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(uint64_t bytes);
  void finish();  // draws the final state and ends the line

  // Tests and --quiet turn drawing off globally.
  static void set_enabled(bool on);

 private:
  void draw(bool final);
  std::string label_, unit_;  // unit_ empty: bytes
  uint64_t total_, done_ = 0;
  bool active_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace mlfx
