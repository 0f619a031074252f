// The agent's I/O policy for sealing (agent/io): priorities of the writer's threads around a
// freeze, huge pages for chunk buffers, writeback hints that never fail.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "io/capture_io_policy.h"
#include "test_util.h"

namespace mlfx::agent::io {
namespace {

// A thread that registers with the policy as the writer's threads do, then waits.
class PipelineThread {
 public:
  explicit PipelineThread(CaptureIoPolicy& policy)
      : thread_([this, &policy] {
          policy.pipeline_thread_started();
          std::unique_lock lk(mu_);
          tid_ = static_cast<pid_t>(syscall(SYS_gettid));
          cv_.notify_all();
          cv_.wait(lk, [&] { return done_; });
        }) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return tid_ != 0; });
  }
  ~PipelineThread() {
    {
      std::lock_guard lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  int nice() const {
    return getpriority(PRIO_PROCESS, static_cast<id_t>(tid_));
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  pid_t tid_ = 0;
  bool done_ = false;
  std::thread thread_;
};

TEST(CaptureIoPolicy, SealingYieldsWhileFrozenUnlessTheReaderWaitsForIt) {
  const int own = getpriority(PRIO_PROCESS, 0);
  CaptureIoPolicy policy;
  PipelineThread early(policy);
  EXPECT_EQ(early.nice(), own);
  policy.set_background(true);
  EXPECT_TRUE(policy.low_priority());
  EXPECT_EQ(early.nice(), 19);
  PipelineThread late(policy);  // a thread that starts during the freeze yields too
  EXPECT_EQ(late.nice(), 19);
  // The reader waits for a free buffer: sealing holds it up and runs at full priority (raising
  // a priority back needs root, as the agent runs).
  policy.producer_waiting(true);
  EXPECT_FALSE(policy.low_priority());
  if (geteuid() == 0) {
    EXPECT_EQ(early.nice(), own);
    EXPECT_EQ(late.nice(), own);
  }
  policy.producer_waiting(false);
  EXPECT_EQ(early.nice(), 19);
  policy.set_background(false);
  EXPECT_FALSE(policy.low_priority());
  if (geteuid() == 0) {
    EXPECT_EQ(early.nice(), own);
  }
  // After the thaw, waiting for buffers changes nothing.
  policy.producer_waiting(true);
  policy.producer_waiting(false);
  EXPECT_FALSE(policy.low_priority());
}

// Chunk buffers ask for transparent huge pages ("hg" in smaps' VmFlags).
TEST(CaptureIoPolicy, ChunkBuffersAskForHugePages) {
  const size_t size = 4u << 20;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  CaptureIoPolicy policy;
  policy.chunk_buffer_mapped(p, size);
  const std::string smaps = testing::read_file("/proc/self/smaps");
  char start[32];
  std::snprintf(start, sizeof start, "%lx-", static_cast<unsigned long>(reinterpret_cast<uintptr_t>(p)));
  const size_t at = smaps.find(start);
  ASSERT_NE(at, std::string::npos);
  const size_t flags = smaps.find("VmFlags:", at);
  const std::string line = smaps.substr(flags, smaps.find('\n', flags) - flags);
  EXPECT_NE(line.find(" hg"), std::string::npos) << line;
  munmap(p, size);
}

// Writeback hints are only hints: on a pipe they are refused and nothing fails.
TEST(CaptureIoPolicy, WritebackHintsNeverFail) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  CaptureIoPolicy policy;
  for (uint64_t off = 64; off < (64u << 20); off += 4u << 20) policy.wrote(fds[1], off, 4u << 20);
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace mlfx::agent::io
