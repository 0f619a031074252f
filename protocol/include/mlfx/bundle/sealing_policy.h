// Hooks through which the program that seals applies its own I/O policy to the bundle writer:
// the CPU priority of its threads, how its chunk buffers are backed, how the output reaches
// the disk. The protocol only calls them; every default does nothing. The agent's policy
// (agent/io/capture_io_policy.h) lets a capture read a frozen process first and seal after,
// asks for huge pages and starts writeback early.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mlfx::bundle {

class SealingPolicy {
 public:
  virtual ~SealingPolicy() = default;
  // In each of the writer's pipeline threads, first thing (they hash, encrypt and write).
  virtual void pipeline_thread_started() {}
  // On the fresh mapping of a chunk buffer, before anything touches it.
  virtual void chunk_buffer_mapped(void* /*data*/, size_t /*size*/) {}
  // The producer (the code filling chunks) waits for a free chunk buffer (true), or got one
  // (false): meanwhile it is sealing that holds it up.
  virtual void producer_waiting(bool /*waiting*/) {}
  // The writer wrote bytes [offset, offset + size) of the bundle to `fd` (in file order).
  virtual void wrote(int /*fd*/, uint64_t /*offset*/, uint64_t /*size*/) {}
};

}  // namespace mlfx::bundle
