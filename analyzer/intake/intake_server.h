// `mlfx serve`: the intake's network side. Boost.Asio coroutines, one io_context per thread
// (a connection stays on one thread); each
// connection is a TLS 1.3 mutual handshake, then frames fed to an IntakeSession. Bounded
// (wire-protocol.md §9): connections not authenticated yet, per source address and in all,
// with a short deadline for the handshake and HELLO; authenticated sessions, in all and per
// device; the memory of record buffers; one frame buffer per connection; idle timeouts.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "intake/evidence_store.h"
#include "intake/request_queue.h"
#include "mlfx/transport/tls.h"

namespace mlfx::intake {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port (see IntakeServer::port)
  transport::TlsFiles tls;
  // handshake_timeout: from accept to HELLO (TLS handshake included), whatever arrives on the
  // way; idle_timeout: for each frame after that.
  std::chrono::milliseconds handshake_timeout{5000}, idle_timeout{60000};
  size_t max_connections = 256;         // authenticated sessions at once
  size_t max_sessions_per_device = 4;   // of them, one device key's
  size_t max_handshakes = 256;          // connections not authenticated yet
  size_t max_handshakes_per_address = 32;
  uint64_t upload_memory = uint64_t(2) << 30;  // record buffers of all uploads; a quarter per device
  uint32_t max_record = (64u << 20) + 56;
  unsigned threads = 0;  // io threads (each with its own io_context); 0: one per core, at least 2
  RequestQueue* requests = nullptr;  // the lab's capture requests to hand to devices (§12); none without
};

// One JSON line per event (connections, uploads, refusals) goes to this sink.
using EventLog = std::function<void(const json::Json&)>;

class IntakeServer {
 public:
  // Binds the address and loads the TLS identity; fails early on a bad file.
  static Result<std::unique_ptr<IntakeServer>> create(ServerOptions options, EvidenceStore& store, EventLog log);
  ~IntakeServer();
  uint16_t port() const;
  // Serves until stop() (from any thread or a signal handler's asio::signal_set).
  void run();
  void stop();

 private:
  struct Impl;
  explicit IntakeServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlfx::intake
