// Small helpers shared by the fuzz targets (libFuzzer entry points; see README.md).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <string>

#include "fixed_keys.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::fuzz {

// An invariant of the code under test was broken: report and abort, which libFuzzer and
// replay_main both treat as a crash (and save the input).
[[noreturn]] inline void invariant_failed(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz invariant failed: %s\n  %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

// The input as a file path for readers that take one: one memfd for the whole process,
// rewritten for every input ("/proc/self/fd/N"), so nothing touches the disk.
inline const std::string& input_as_file(const uint8_t* data, size_t size) {
  static const int fd = [] {
    int f = memfd_create("mlfx-fuzz-input", MFD_CLOEXEC);
    if (f < 0) invariant_failed("memfd_create", std::strerror(errno));
    return f;
  }();
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (ftruncate(fd, 0) != 0) invariant_failed("ftruncate memfd", std::strerror(errno));
  size_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) invariant_failed("write memfd", std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  return path;
}

// The fixed lab key of fixed_keys.h, parsed once. A failure here is a harness error.
inline const crypto::SecretKeyFile& fixed_lab_key() {
  static const crypto::SecretKeyFile key = [] {
    auto k = crypto::parse_secret_key_pem(kFixedLabKeyPem, "fixed lab key");
    if (!k || !k->box || !k->signing)
      invariant_failed("the fixed lab key parses", k ? "no X25519 key" : k.error().to_string());
    return std::move(*k);
  }();
  return key;
}

// The fixed device key of fixed_keys.h, parsed once.
inline const crypto::SecretKeyFile& fixed_device_key() {
  static const crypto::SecretKeyFile key = [] {
    auto k = crypto::parse_secret_key_pem(kFixedDeviceKeyPem, "fixed device key");
    if (!k || !k->signing)
      invariant_failed("the fixed device key parses", k ? "no Ed25519 key" : k.error().to_string());
    return std::move(*k);
  }();
  return key;
}

}  // namespace mlfx::fuzz
