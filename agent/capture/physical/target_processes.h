// The processes named with --pid in a whole-memory capture: checked before anything is loaded,
// frozen (every thread stopped with ptrace, process/thread_freezer.h) while the image is read,
// and recorded while frozen so that the records match the image: maps, the raw pagemap of every
// readable mapping (stream `pagemap`), a page sample (SHA-256 of a few present pages read
// through /proc/PID/mem, by which the lab ties the context to the image), comm and cmdline.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "capture/physical/pagemap.h"
#include "capture/process/proc_maps.h"
#include "capture/process/thread_freezer.h"
#include "mlfx/base/json.h"

namespace mlfx::agent::physical {

// Refuses a pid that does not exist, is a thread, a zombie, a kernel thread or this agent.
Status check_target_pid(pid_t pid);

struct PageSample {
  uint64_t vaddr = 0;
  std::string sha256;
};

struct TargetRecord {
  pid_t pid = 0;
  std::string comm, cmdline;
  uint64_t threads = 0;  // stopped
  std::vector<process::MapEntry> maps;
  std::vector<std::optional<std::string>> build_ids;  // parallel to maps, after the thaw
  uint32_t pagemap_records = 0;
  std::vector<PageSample> page_sample;
  uint64_t pages_moved = 0;  // entries that changed while the image was read (settle())
};

// `count` of the candidates, evenly spread over them (all when there are fewer).
std::vector<uint64_t> spread_sample(const std::vector<uint64_t>& candidates, size_t count);

class TargetProcesses {
 public:
  explicit TargetProcesses(std::vector<pid_t> pids) : pids_(std::move(pids)) {}

  // Each pid checked (check_target_pid); nothing is frozen.
  Status check() const;
  // Stops every thread of every target; on failure those already stopped are released.
  // `freeze_threads`, when set, freezes a process instead of ThreadFreezer::freeze (the daemon
  // hands over processes it already holds).
  Status freeze(std::chrono::milliseconds stop_timeout,
                const std::function<Result<process::ThreadFreezer>(pid_t)>& freeze_threads = {});
  // While frozen: the records and the pagemap stream.
  Status record(uint64_t page_size);
  // While still frozen, after the image was read: a stopped process's pages can still move
  // (khugepaged collapsing them into a huge page, compaction, migration), so the image may hold
  // a page at its old frame, its new one, or neither. Every entry that changed since record()
  // is zeroed in the pagemap stream and counted in pages_moved; the page itself, if it was
  // present, is read through /proc/PID/mem (the process is still stopped: the same bytes) into
  // the `moved` stream.
  Status settle(uint64_t page_size);
  // Releases every target. Idempotent.
  Status thaw();
  // After the thaw: the GNU build-id of every mapped file (the lab checks its own copies of
  // files the image lacks against them). Not while frozen: opening files lengthens the freeze.
  void read_build_ids();

  bool empty() const { return pids_.empty(); }
  const std::vector<pid_t>& pids() const { return pids_; }
  const std::vector<TargetRecord>& records() const { return records_; }
  // The `pagemap` stream (after record()); empty without targets.
  const Bytes& pagemap_stream() const { return pagemap_; }
  // The `moved` stream (after settle()); empty when no page moved.
  const Bytes& moved_stream() const { return moved_; }
  json::Json processes_json() const;

 private:
  Result<TargetRecord> record_one(pid_t pid, uint64_t page_size, PagemapWriter& pagemap);

  std::vector<pid_t> pids_;
  std::vector<process::ThreadFreezer> frozen_;
  std::vector<TargetRecord> records_;
  Bytes pagemap_;
  Bytes moved_;
};

}  // namespace mlfx::agent::physical
