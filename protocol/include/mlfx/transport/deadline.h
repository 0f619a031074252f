// A moving deadline for one connection: when it passes, the socket's pending operations are
// cancelled (they fail with operation_aborted) and expired() turns true. Each side re-arms it
// before every frame, so it measures time without progress, not the connection's age.
#pragma once

#include "mlfx/transport/tls.h"  // first: it includes <utility> before any asio header

#include <chrono>
#include <memory>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "mlfx/transport/tls.h"

namespace mlfx::transport {

class Deadline {
 public:
  // Starts the watcher on the stream's executor. The stream must outlive the watcher or
  // stop() must be called before the stream goes away.
  static std::shared_ptr<Deadline> start(TlsStream& stream, std::chrono::milliseconds first);
  void expire_in(std::chrono::milliseconds d);
  bool expired() const { return expired_; }
  void stop();

 private:
  explicit Deadline(TlsStream& stream);
  asio::awaitable<void> watch(std::shared_ptr<Deadline> keep_alive);

  TlsStream& stream_;
  asio::steady_timer timer_;
  std::chrono::steady_clock::time_point deadline_;
  bool expired_ = false, stopped_ = false;
};

}  // namespace mlfx::transport
