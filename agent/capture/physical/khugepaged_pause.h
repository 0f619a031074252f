// Less smear in a whole-memory image: khugepaged collapses runs of small pages into huge pages
// in the background, copying them to new frames and freeing the old ones. While an image is read
// (a minute or more), a process's page tables and its data in the image then disagree: during one
// LiME capture in the VM lab it moved 15,376 pages of a torch victim, and without the captured
// pagemap the victim's models could not be found through its page tables. Writing "never" to
// transparent_hugepage/enabled stops the khugepaged thread (the write returns once it has
// exited); huge pages already made stay, and the previous mode is written back after the image.
// Recorded in the context either way (protocol/doc/physical-capture.md, "smear_reduction").
#pragma once

#include <string>

#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::agent::physical {

inline constexpr char kThpEnabledPath[] = "/sys/kernel/mm/transparent_hugepage/enabled";

// The selected mode of a sysfs choice list ("always [madvise] never" -> "madvise"); empty when
// none is selected.
std::string selected_choice(const std::string& text);

class KhugepagedPause {
 public:
  explicit KhugepagedPause(std::string setting = kThpEnabledPath) : setting_(std::move(setting)) {}
  KhugepagedPause(const KhugepagedPause&) = delete;
  KhugepagedPause& operator=(const KhugepagedPause&) = delete;
  ~KhugepagedPause() { (void)resume(); }

  // Stops khugepaged where THP is on. Not an error where it cannot (no THP, a read-only /sys):
  // the context says why, and the capture goes on.
  void pause();
  // Writes the previous mode back. Idempotent; an error when it cannot (the machine is left
  // with THP off: the message says how to restore it).
  Status resume();

  bool paused() const { return paused_; }
  json::Json to_json() const;

 private:
  std::string setting_;
  std::string was_;       // the mode before
  std::string not_done_;  // why it was not paused
  std::string restore_error_;
  bool paused_ = false, restored_ = false;
};

}  // namespace mlfx::agent::physical
