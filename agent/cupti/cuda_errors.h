// CUDA errors as events: which CUresults count as errors, their names, the rate limit, and the
// one-message notice to the mlfx-agent daemon's anomaly socket ({"op":"cuda-error",...}).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

namespace mlfx::cupti {

// "CUDA_ERROR_ILLEGAL_ADDRESS" for 700; nullptr for a code this toolkit did not name.
const char* cuda_error_name(int code);

// A non-zero CUresult that is not an error event: answers that programs ask for and expect.
//   CUDA_ERROR_NOT_READY (600): cuStreamQuery/cuEventQuery polling, work still running.
//   CUDA_ERROR_NOT_FOUND (500): symbol lookups (cuGetProcAddress, cuModuleGetGlobal) probing.
//   CUDA_ERROR_NOT_SUPPORTED (801): feature probes (the runtime and PyTorch try, then fall back).
//   CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED (704) / _NOT_ENABLED (705): idempotent peer set-up.
//   CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED (712) / _NOT_REGISTERED (713): the same for pinning.
// Everything else (launch failures, illegal address, out of memory, invalid value, ...) is one.
bool is_benign_result(int code);

// At most one event per `interval_ns`; counts the ones refused since the last one allowed.
class RateLimiter {
 public:
  explicit RateLimiter(uint64_t interval_ns) : interval_ns_(interval_ns) {}
  // True when an event may go out at `now_ns` (monotonic); then *suppressed is how many were
  // refused since the previous one, and the count starts again.
  bool allow(uint64_t now_ns, uint64_t* suppressed);
  uint64_t suppressed_total() const;

 private:
  mutable std::mutex mu_;
  uint64_t interval_ns_;
  bool any_ = false;
  uint64_t last_ns_ = 0, suppressed_ = 0, suppressed_total_ = 0;
};

// {"op":"cuda-error","api":"cuLaunchKernel","error":"CUDA_ERROR_ILLEGAL_ADDRESS","code":700}
std::string anomaly_message(const std::string& api, int code);

// Sends one message to a SOCK_SEQPACKET Unix socket without ever blocking: non-blocking socket,
// connect and send; a daemon that is absent, busy or slow loses the message. The reply is not
// read. False with *error saying why when it was not sent.
bool send_anomaly(const std::string& socket_path, const std::string& message, std::string* error);

}  // namespace mlfx::cupti
