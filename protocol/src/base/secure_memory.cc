#include "mlfx/base/secure_memory.h"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <utility>

#include <openssl/crypto.h>

#include "mlfx/base/file.h"

namespace mlfx {
namespace {

// OpenSSL's secure heap: private keys parsed from PEM, our SecretBytes, a key file's text
// while it is parsed (64 KiB at most). A power of two, as OpenSSL wants.
constexpr size_t kSecureHeapBytes = 256u << 10;
constexpr size_t kSecureHeapMinAlloc = 32;

std::atomic<uint64_t> g_buffer_bytes{0}, g_locked_bytes{0};

uint64_t memlock_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return 0;
  return r.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<uint64_t>(r.rlim_cur);
}

// Locks [p, p+n) if this process's locked bytes stay within RLIMIT_MEMLOCK (also for root,
// whom the kernel would let lock everything: the limit is the operator's say in how much RAM
// may be pinned). The secure heap counts against it.
bool try_lock(void* p, size_t n) {
  const uint64_t limit = memlock_limit();
  const uint64_t heap = CRYPTO_secure_malloc_initialized() ? kSecureHeapBytes : 0;
  uint64_t locked = g_locked_bytes.load();
  do {
    if (heap + locked + n > limit || heap + locked + n < locked) return false;
  } while (!g_locked_bytes.compare_exchange_weak(locked, locked + n));
  if (mlock(p, n) == 0) return true;
  g_locked_bytes -= n;
  return false;
}

}  // namespace

Status protect_process() {
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
    return fail(Errc::kIo, "prctl(PR_SET_DUMPABLE, 0): " + errno_text(errno));
  // 1: ready; 2: ready but not locked (RLIMIT_MEMLOCK), still kept out of core dumps.
  if (!CRYPTO_secure_malloc_initialized() && CRYPTO_secure_malloc_init(kSecureHeapBytes, kSecureHeapMinAlloc) == 0)
    return fail(Errc::kCrypto, "cannot set up OpenSSL's secure heap for key material");
  return {};
}

Result<SecureBuffer> SecureBuffer::allocate(size_t size, size_t align,
                                           const std::function<void(void*, size_t)>& advise) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (align < page) align = page;
  if (size == 0) size = 1;
  size = (size + page - 1) / page * page;
  const size_t len = size + align - page;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return fail(Errc::kIo, "cannot allocate " + std::to_string(size) + " bytes: " + errno_text(errno));
  const auto base = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (base + align - 1) & ~uintptr_t{align - 1};
  if (aligned > base) munmap(p, aligned - base);
  if (aligned + size < base + len) munmap(reinterpret_cast<void*>(aligned + size), base + len - aligned - size);
  SecureBuffer b;
  b.data_ = reinterpret_cast<uint8_t*>(aligned);
  b.size_ = size;
  g_buffer_bytes += size;
  if (advise) advise(b.data_, size);  // before mlock faults pages in
  if (madvise(b.data_, size, MADV_DONTDUMP) != 0)
    return fail(Errc::kIo, "cannot keep a plaintext buffer out of core dumps (MADV_DONTDUMP): " + errno_text(errno));
  b.locked_ = try_lock(b.data_, size);
  return b;
}

SecureBuffer::SecureBuffer(SecureBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), locked_(std::exchange(o.locked_, false)) {}

SecureBuffer& SecureBuffer::operator=(SecureBuffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    locked_ = std::exchange(o.locked_, false);
  }
  return *this;
}

SecureBuffer::~SecureBuffer() { release(); }

// Unmapped anonymous pages go back to the kernel, which clears them before any reuse.
void SecureBuffer::release() {
  if (!data_) return;
  munmap(data_, size_);  // also unlocks
  g_buffer_bytes -= size_;
  if (locked_) g_locked_bytes -= size_;
  data_ = nullptr;
}

SecureMemoryStats secure_memory_stats() {
  return {g_buffer_bytes.load(), g_locked_bytes.load(), memlock_limit(), CRYPTO_secure_malloc_initialized() == 1};
}

void* secure_alloc(size_t n) {
  void* p = CRYPTO_secure_malloc_initialized() ? OPENSSL_secure_malloc(n) : nullptr;
  if (!p) p = OPENSSL_malloc(n);  // no secure heap, or it is full
  if (!p) throw std::bad_alloc();
  return p;
}

void secure_free(void* p, size_t n) noexcept { OPENSSL_secure_clear_free(p, n); }

}  // namespace mlfx
