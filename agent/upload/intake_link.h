// One mutual-TLS session of this device with the lab intake (wire-protocol.md §2, §4): TCP,
// TLS 1.3 under the lab CA (the intake's certificate checked against the CRL when one is
// given, its key against the pin when one is given), HELLO / WELCOME with the device identity
// the intake sees checked against this agent's key, then request/answer exchanges of control
// frames. Used by the lab request poller (lab_requests.h); the uploader connects the same way.
#pragma once

#include "mlfx/transport/tls.h"  // first: it includes <utility> before any asio header

#include <memory>
#include <optional>
#include <string>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "mlfx/base/json.h"
#include "mlfx/wire/messages.h"
#include "upload/uploader.h"

namespace mlfx::agent {

struct IntakeAnswer {
  wire::FrameType type;
  Bytes body;
};

class IntakeLink {
 public:
  // `device_fingerprint`: this agent's key, which the intake must see on the connection.
  IntakeLink(boost::asio::io_context& io, boost::asio::ssl::context& ctx, const IntakeTarget& target,
             std::string device_fingerprint);
  ~IntakeLink();
  IntakeLink(const IntakeLink&) = delete;
  IntakeLink& operator=(const IntakeLink&) = delete;

  // Connects, shakes hands and exchanges HELLO / WELCOME. kUntrusted for a revoked or unpinned
  // intake, a CRL past its next update, or an intake that sees another device key.
  boost::asio::awaitable<Status> connect();
  // Sends one control frame and reads the answer; an ERROR answer is an error (kIo) naming the
  // intake's code, which `code` receives.
  boost::asio::awaitable<Result<IntakeAnswer>> exchange(wire::FrameType type, const json::Json& body,
                                                        std::optional<wire::WireError>* code = nullptr);
  // Sends TLS close_notify (bounded) and closes.
  boost::asio::awaitable<void> close();

  const wire::Welcome& welcome() const { return welcome_; }
  const std::optional<crypto::VerifyKey>& intake_key() const { return intake_key_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  const IntakeTarget& target_;
  std::string device_fingerprint_;
  wire::Welcome welcome_;
  std::optional<crypto::VerifyKey> intake_key_;
};

}  // namespace mlfx::agent
