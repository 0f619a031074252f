// The agent's I/O policy for sealing a capture (bundle::SealingPolicy): the protocol's bundle
// writer calls these hooks, the agent decides.
//
//   CPU priority  While the target is frozen (set_background(true)) the writer's threads run
//                 at the lowest priority (nice 19): reading the frozen process's memory gets
//                 the cores first and sealing takes what is left. Whenever the reader waits for
//                 a free chunk buffer, sealing is what holds it up, and they run at the agent's
//                 own priority again. Raising it back needs the right to lower a nice value
//                 (root); without it sealing stays at low priority until the capture ends.
//   huge pages    Chunk buffers ask for transparent huge pages, so filling hundreds of MiB
//                 while the target is frozen takes 512x fewer page faults.
//   writeback     Write-behind (mlfx/base/write_behind.h): the disk starts writing every 16 MiB
//                 as it is written, and every 128 MiB is synced while sealing goes on, so the
//                 fsync that ends sealing has little left to wait for.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "mlfx/base/write_behind.h"
#include "mlfx/bundle/sealing_policy.h"

namespace mlfx::agent::io {

class CaptureIoPolicy final : public bundle::SealingPolicy {
 public:
  // True from the freeze to the thaw.
  void set_background(bool background);
  // Whether the writer's threads run at low priority now (for tests).
  bool low_priority() const;

  void pipeline_thread_started() override;
  void chunk_buffer_mapped(void* data, size_t size) override;
  void producer_waiting(bool waiting) override;
  void wrote(int fd, uint64_t offset, uint64_t size) override;
  // Stops the write-behind; the first error its syncs met.
  Status finish_writes() { return write_behind_.stop(); }

 private:
  void apply_priority_locked();

  mutable std::mutex mu_;
  std::vector<pid_t> threads_;
  bool background_ = false;
  bool producer_waiting_ = false;
  bool low_ = false;  // what the threads run at now
  WriteBehind write_behind_;
};

}  // namespace mlfx::agent::io
