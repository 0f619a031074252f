// Byte buffers, little-endian codecs, hex and base64.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mlfx/base/secure_memory.h"

namespace mlfx {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

inline ByteView as_bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
inline std::string_view as_chars(ByteView b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

template <class T>
inline void store_le(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<uint8_t>(uint64_t(v) >> (8 * i));
}
template <class T>
inline T load_le(const uint8_t* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(p[i]) << (8 * i);
  return static_cast<T>(v);
}

std::string to_hex(ByteView b);
// An address for messages and reports: "0x7f3a2c001000".
std::string hex_address(uint64_t address);
std::optional<Bytes> from_hex(std::string_view s);
std::string to_base64(ByteView b);
std::optional<Bytes> from_base64(std::string_view s);

// Constant-time comparison for secrets and authenticators.
bool equal_ct(ByteView a, ByteView b);

// Overwrites memory in a way the compiler may not elide (OPENSSL_cleanse).
void secure_zero(void* p, size_t n);

// A byte buffer that is zeroised when destroyed; for key material. It lives in OpenSSL's
// secure heap once protect_process() has set it up (see secure_memory.h).
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t n) : data_(n) {}
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  SecretBytes(SecretBytes&& o) noexcept : data_(std::move(o.data_)) {}
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    wipe();
    data_ = std::move(o.data_);
    return *this;
  }
  ~SecretBytes() { wipe(); }

  uint8_t* data() { return data_.data(); }
  const uint8_t* data() const { return data_.data(); }
  size_t size() const { return data_.size(); }
  ByteView view() const { return {data_.data(), data_.size()}; }
  void resize(size_t n) {  // only used before the buffer holds a secret
    data_.resize(n);
  }

 private:
  void wipe() {
    if (!data_.empty()) secure_zero(data_.data(), data_.size());
  }
  std::vector<uint8_t, SecureAllocator<uint8_t>> data_;
};

}  // namespace mlfx
