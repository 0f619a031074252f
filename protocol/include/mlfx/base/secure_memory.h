// Keeping decrypted evidence and key material out of core dumps, swap and other processes.
//
//   protect_process()  once, first thing, in a process that will hold plaintext evidence or
//                      private keys: PR_SET_DUMPABLE=0 (no core dump; processes of the same
//                      user can no longer ptrace it or read /proc/PID/mem), and OpenSSL's
//                      secure heap, where OpenSSL keeps Ed25519/X25519 private keys and where
//                      SecretBytes live (locked, MADV_DONTDUMP, guard pages).
//   SecureBuffer       an anonymous mapping for plaintext (chunk buffers): MADV_DONTDUMP, and
//                      mlock while the bytes this process locked stay within RLIMIT_MEMLOCK;
//                      beyond that it is silently not locked and secure_memory_stats() says so.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>

#include "mlfx/base/result.h"

namespace mlfx {

Status protect_process();

class SecureBuffer {
 public:
  // `size` bytes at an address aligned to `align` (a power of two, at least a page).
  // `advise`, when given, runs on the fresh mapping before anything touches or locks it: the
  // caller's memory policy (e.g. the agent asks for transparent huge pages there).
  static Result<SecureBuffer> allocate(size_t size, size_t align = 0,
                                       const std::function<void(void*, size_t)>& advise = {});
  SecureBuffer() = default;
  SecureBuffer(SecureBuffer&& o) noexcept;
  SecureBuffer& operator=(SecureBuffer&& o) noexcept;
  SecureBuffer(const SecureBuffer&) = delete;
  ~SecureBuffer();

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool locked() const { return locked_; }

 private:
  void release();
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool locked_ = false;
};

// What this process has protected so far, for the records (e.g. a capture's context).
struct SecureMemoryStats {
  uint64_t buffer_bytes = 0;  // in SecureBuffers now, all MADV_DONTDUMP
  uint64_t locked_bytes = 0;  // of which locked in RAM
  uint64_t memlock_limit = 0; // RLIMIT_MEMLOCK (UINT64_MAX: unlimited)
  bool secure_heap = false;   // OpenSSL's secure heap is set up
};
SecureMemoryStats secure_memory_stats();

// Small secrets from OpenSSL's secure heap (plain memory when it is not set up or full);
// cleansed when freed.
void* secure_alloc(size_t n);
void secure_free(void* p, size_t n) noexcept;

template <class T>
struct SecureAllocator {
  using value_type = T;
  SecureAllocator() = default;
  template <class U>
  SecureAllocator(const SecureAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return static_cast<T*>(secure_alloc(n * sizeof(T))); }
  void deallocate(T* p, size_t n) noexcept { secure_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const SecureAllocator<U>&) const noexcept { return true; }
};

}  // namespace mlfx
