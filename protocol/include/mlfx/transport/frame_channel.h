// Frames (wire-protocol.md §3) over a TLS stream, with C++20 coroutines. One frame buffer per
// channel: a header is checked against its limits before its body is read or allocated.
#pragma once

#include "mlfx/transport/tls.h"  // first: it includes <utility> before any asio header

#include "mlfx/transport/tls.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "mlfx/base/bytes.h"
#include "mlfx/base/json.h"
#include "mlfx/transport/frame_buffer.h"
#include "mlfx/wire/messages.h"

// Like MLFX_TRY / MLFX_ASSIGN, for coroutines returning asio::awaitable<Result<T>>.
#define MLFX_CO_TRY(expr)                                            \
  do {                                                               \
    if (auto mlfx_try_r_ = (expr); !mlfx_try_r_)                     \
      co_return ::mlfx::fail(std::move(mlfx_try_r_).error());        \
  } while (0)
#define MLFX_CO_ASSIGN(decl, expr) MLFX_CO_ASSIGN_IMPL_(MLFX_CONCAT_(mlfx_r_, __LINE__), decl, expr)
#define MLFX_CO_ASSIGN_IMPL_(tmp, decl, expr)                        \
  auto tmp = (expr);                                                 \
  if (!tmp) co_return ::mlfx::fail(std::move(tmp).error());          \
  decl = std::move(*tmp)

namespace mlfx::transport {

struct Frame {
  wire::FrameType type;
  ByteView body;  // valid until the next read, or for as long as whoever takes buffer() keeps it
};

class FrameChannel {
 public:
  explicit FrameChannel(TlsStream& stream) : stream_(stream) {}

  // Reads one frame. A header over its limits is answered with ERROR (bad_frame or
  // frame_too_large) before any of its body is read, and the read fails with kBadFormat
  // (connection failures are kIo). A RECORD's unit lands at an address congruent to its file
  // offset modulo kIoAlignment (FrameBuffer).
  asio::awaitable<Result<Frame>> read(uint32_t max_record);
  // The storage of the last frame's body. A receiver that keeps the body may swap this for a
  // spare buffer (or an empty one): the channel reads the next frame into what it finds here.
  FrameBuffer& buffer() { return buffer_; }
  asio::awaitable<Status> write(wire::FrameType type, ByteView body);
  asio::awaitable<Status> write_json(wire::FrameType type, const json::Json& body);
  // A frame already encoded (header and body).
  asio::awaitable<Status> write_encoded(ByteView frame);
  // A RECORD frame: offset and unit gathered straight from the caller's buffer.
  asio::awaitable<Status> write_record(uint64_t offset, ByteView unit);
  asio::awaitable<Status> send_error(wire::WireError code, const std::string& message);
  // Sends TLS close_notify (bounded by the caller's timeouts), then closes the socket.
  asio::awaitable<void> shutdown();

  // Paces writes to at most this many bytes per second (0: no limit), in 64 KiB steps.
  void set_rate_limit(uint64_t bytes_per_second) { rate_ = bytes_per_second; }
  uint64_t bytes_read() const { return bytes_read_; }
  uint64_t bytes_written() const { return bytes_written_; }
  TlsStream& stream() { return stream_; }

 private:
  asio::awaitable<Status> write_buffers(const std::vector<asio::const_buffer>& parts, size_t total);
  asio::awaitable<Status> write_part(asio::const_buffer part, bool more_follows);
  asio::awaitable<void> pace(size_t bytes);

  TlsStream& stream_;
  FrameBuffer buffer_;
  Bytes gather_;  // small parts and the start of the next part, sent as one TLS record
  uint64_t rate_ = 0;
  std::chrono::steady_clock::time_point pace_start_{};
  uint64_t paced_bytes_ = 0;
  uint64_t bytes_read_ = 0, bytes_written_ = 0;
};

// An I/O error of the connection, in words.
Error connection_error(const boost::system::error_code& ec, const std::string& doing, TlsStream* stream = nullptr);

}  // namespace mlfx::transport
