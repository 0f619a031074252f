#include "mlfx/base/progress.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace mlfx {

static std::atomic<bool> g_enabled{true};

void Progress::set_enabled(bool on) { g_enabled = on; }

Progress::Progress(std::string label, uint64_t total)
    : label_(std::move(label)),
      total_(total),
      active_(g_enabled && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() { finish(); }

void Progress::advance(uint64_t bytes) {
  done_ += bytes;
  if (!active_) return;
  auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (active_) draw(true);
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

void Progress::draw(bool final) {
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = secs > 0 ? done_ / secs : 0;
  std::string line = "\r" + label_ + " ";
  if (total_ > 0) {
    const int width = 30;
    double frac = std::min(1.0, double(done_) / double(total_));
    int filled = static_cast<int>(frac * width);
    line += "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3.0f%% ", frac * 100);
    line += pct + (unit_.empty() ? human_bytes(double(done_)) + "/" + human_bytes(double(total_))
                                 : std::to_string(done_) + "/" + std::to_string(total_) + " " + unit_);
    if (!final && rate > 0) {
      char eta[32];
      std::snprintf(eta, sizeof eta, " ETA %.0fs", double(total_ - std::min(done_, total_)) / rate);
      line += eta;
    }
  } else {
    line += human_bytes(double(done_));
  }
  if (unit_.empty()) line += "  " + human_bytes(rate) + "/s";
  line += "\033[K";
  if (final) line += "\n";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace mlfx
