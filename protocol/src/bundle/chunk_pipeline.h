// The thread pool that takes a bundle's chunks through their work, shared by the writer (hash
// the plaintext, encrypt, hash the record, write) and the reader (verify and decrypt, hash the
// plaintext, hand it over). Internal to the bundle library.
//
// The work on a chunk is a list of steps; a chunk enters a step once every task of the step
// before is done, and the tasks of one step may run at the same time (they only read the
// chunk, or write disjoint parts of it). A task is
//   ordered   it takes chunks one at a time in the order they were submitted (a running hash
//             of a stream, the output file): one thread at a time runs it;
//   parallel  any number of chunks at once (encryption, the hash of one record).
// Every worker takes whatever task is ready, ordered ones first (they are the serial chains
// that bound throughput), else the oldest chunk's parallel task. So a two-core machine runs,
// say, the whole-stream hash on one core and encryption on the other, and neither idles
// while there is work.
//
// Chunks live in slots the owner allocates (its buffers); a slot is free again once its chunk
// passed the last step. A failed task stops the pipeline at that chunk: tasks of earlier
// chunks still run, so the error reported is always that of the first failing chunk, as a
// serial loop would report it.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx::bundle::detail {

struct PipelineTask {
  bool ordered = false;
  // Runs the task on the chunk in `slot`; `worker` (0..workers-1) indexes per-thread state.
  std::function<Status(size_t slot, unsigned worker)> run;
};

// One worker per core (at least `min_workers`, at most 8): enough to keep every core busy.
inline unsigned default_workers(unsigned min_workers = 2) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return std::clamp(cores, min_workers, 8u);
}

class ChunkPipeline {
 public:
  // `slots`: the most slots the owner will use (0..slots-1). `thread_started` runs first in
  // every worker thread (e.g. to record it for its CPU priority).
  ChunkPipeline(std::vector<std::vector<PipelineTask>> steps, size_t slots, unsigned workers,
                std::function<void()> thread_started = {})
      : steps_(std::move(steps)), thread_started_(std::move(thread_started)) {
    free_.reserve(slots);
    for (const auto& step : steps_) {
      step_lanes_.push_back(next_seq_.size());
      next_seq_.resize(next_seq_.size() + step.size(), 0);
    }
    workers = std::max(1u, workers);
    for (unsigned w = 0; w < workers; ++w) threads_.emplace_back([this, w] { work(w); });
  }
  ChunkPipeline(const ChunkPipeline&) = delete;
  ChunkPipeline& operator=(const ChunkPipeline&) = delete;

  // Stops after the tasks running now; chunks still in flight are abandoned.
  ~ChunkPipeline() {
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  // Hands a slot the owner just filled with memory to the free list.
  void add_free_slot(size_t slot) {
    std::lock_guard lk(mu_);
    free_.push_back(slot);
    cv_.notify_all();
  }

  // A free slot, if there is one now.
  Result<std::optional<size_t>> try_acquire() {
    std::lock_guard lk(mu_);
    if (error_) return fail(*error_);
    if (free_.empty()) return std::optional<size_t>();
    return std::optional<size_t>(take_free_locked());
  }

  // A free slot, waiting for one while every slot is in flight. `waiting` is told when the
  // wait begins (true) and ends (false), not when a slot is free at once.
  Result<size_t> acquire(const std::function<void(bool)>& waiting = {}) {
    std::unique_lock lk(mu_);
    if (free_.empty() && !error_) {
      if (waiting) waiting(true);
      cv_.wait(lk, [&] { return error_ || !free_.empty(); });
      if (waiting) waiting(false);
    }
    if (error_) return fail(*error_);
    return take_free_locked();
  }

  // Sends an acquired, filled slot through the steps.
  Status submit(size_t slot) {
    std::lock_guard lk(mu_);
    if (error_) return fail(*error_);
    in_flight_.push_back({next_submit_++, slot});
    cv_.notify_all();
    return {};
  }

  // Waits until every submitted chunk passed every step, or, after a failure, until nothing
  // runs any more and every chunk before the failing one is done; then returns the failure.
  Status drain() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] {
      if (!error_) return in_flight_.empty();
      return running_ == 0 && (in_flight_.empty() || in_flight_.front().seq >= error_seq_);
    });
    if (error_) return fail(*error_);
    return {};
  }

 private:
  struct Job {
    uint64_t seq;
    size_t slot;
    size_t step = 0;
    uint64_t started = 0, done = 0;  // bit t: task t of the current step
  };
  struct Pick {
    Job* job = nullptr;
    size_t task = 0;
  };

  size_t take_free_locked() {
    const size_t s = free_.back();
    free_.pop_back();
    return s;
  }

  bool ordered(const Job& j, size_t t) const { return steps_[j.step][t].ordered; }
  uint64_t& lane(const Job& j, size_t t) { return next_seq_[step_lanes_[j.step] + t]; }
  bool startable(Job& j, size_t t) {
    return j.seq < error_seq_ && !(j.started >> t & 1) && (!ordered(j, t) || lane(j, t) == j.seq);
  }

  // The next task to run: an ordered one whose turn it is, else the oldest chunk's parallel one.
  std::optional<Pick> pick_locked() {
    for (int pass = 0; pass < 2; ++pass)
      for (Job& j : in_flight_)
        for (size_t t = 0; t < steps_[j.step].size(); ++t)
          if (ordered(j, t) == (pass == 0) && startable(j, t)) return Pick{&j, t};
    return std::nullopt;
  }

  void work(unsigned worker) {
    if (thread_started_) thread_started_();
    std::unique_lock lk(mu_);
    while (true) {
      std::optional<Pick> p;
      cv_.wait(lk, [&] { return stopping_ || (p = pick_locked()); });
      if (stopping_) return;
      Job& j = *p->job;  // not retired while its task runs, and a list never moves it
      j.started |= uint64_t{1} << p->task;
      const PipelineTask& task = steps_[j.step][p->task];
      const uint64_t seq = j.seq;
      const size_t slot = j.slot;
      ++running_;
      lk.unlock();
      Status st = task.run(slot, worker);
      lk.lock();
      --running_;
      if (!st) {
        fail_locked(seq, std::move(st).error());
      } else {
        finish_task_locked(j, p->task);
      }
      cv_.notify_all();
    }
  }

  void finish_task_locked(Job& j, size_t t) {
    if (ordered(j, t)) ++lane(j, t);
    j.done |= uint64_t{1} << t;
    if (j.done != (uint64_t{1} << steps_[j.step].size()) - 1) return;
    j.started = j.done = 0;
    if (++j.step < steps_.size()) return;
    const size_t slot = j.slot;
    in_flight_.erase(std::find_if(in_flight_.begin(), in_flight_.end(), [&](const Job& x) { return &x == &j; }));
    free_.push_back(slot);
  }

  // The failure of the earliest chunk wins; later chunks stop where they are.
  void fail_locked(uint64_t seq, Error e) {
    if (seq >= error_seq_) return;
    error_seq_ = seq;
    error_ = std::move(e);
  }

  const std::vector<std::vector<PipelineTask>> steps_;
  const std::function<void()> thread_started_;
  std::vector<size_t> step_lanes_;  // per step: index of its first task in next_seq_
  std::vector<uint64_t> next_seq_;  // per task: for an ordered one, the chunk whose turn it is

  std::mutex mu_;
  std::condition_variable cv_;
  std::list<Job> in_flight_;  // submission order; a Job stays put while its task runs
  std::vector<size_t> free_;
  uint64_t next_submit_ = 0;
  size_t running_ = 0;
  std::optional<Error> error_;
  uint64_t error_seq_ = std::numeric_limits<uint64_t>::max();
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace mlfx::bundle::detail
