#include "mlfx/transport/frame_channel.h"

#include <algorithm>

#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

// Coroutines here and in their callers pass only named locals to co_await expressions, never
// temporaries of types with destructors: gcc 12 destroys such temporaries twice.

namespace mlfx::transport {

namespace {
constexpr size_t kPaceStep = 64u << 10;
}

Error connection_error(const boost::system::error_code& ec, const std::string& doing, TlsStream* stream) {
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ||
      ec == asio::error::connection_reset || ec == asio::error::broken_pipe)
    return Error(Errc::kIo, doing + ": the connection was closed by the peer");
  if (ec == asio::error::operation_aborted) return Error(Errc::kIo, doing + ": timed out or cancelled");
  return Error(Errc::kIo, doing + ": " + describe(ec, stream));
}

asio::awaitable<Result<Frame>> FrameChannel::read(uint32_t max_record) {
  boost::system::error_code ec;
  std::array<uint8_t, wire::kFrameHeaderSize> header;
  co_await asio::async_read(stream_, asio::buffer(header), asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return fail(connection_error(ec, "reading a frame"));
  auto h = wire::decode_frame_header(header, max_record);
  if (!h) {
    const wire::ErrorMessage& e = h.error();
    co_await send_error(e.code, e.message);
    co_return fail(Errc::kBadFormat, "the peer sent a bad frame: " + e.message);
  }
  // A buffer grown for a larger limit (an earlier upload's records) is not kept past it.
  if (body_.capacity() > std::max(max_record, wire::kMaxControlBody)) Bytes().swap(body_);
  body_.resize(h->body_length);
  co_await asio::async_read(stream_, asio::buffer(body_), asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return fail(connection_error(ec, std::string("reading a ") + wire::frame_type_name(h->type) + " frame"));
  bytes_read_ += wire::kFrameHeaderSize + body_.size();
  co_return Frame{h->type, ByteView(body_.data(), body_.size())};
}

asio::awaitable<void> FrameChannel::pace(size_t bytes) {
  const auto now = std::chrono::steady_clock::now();
  if (paced_bytes_ == 0) pace_start_ = now;
  paced_bytes_ += bytes;
  const auto due = pace_start_ + std::chrono::microseconds(paced_bytes_ * 1000000 / rate_);
  if (due > now) {
    asio::steady_timer timer(stream_.get_executor(), due);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  } else if (now - due > std::chrono::seconds(1)) {
    paced_bytes_ = 0;  // idle for a while: no burst to make up for it
  }
}

asio::awaitable<Status> FrameChannel::write_buffers(const std::vector<asio::const_buffer>& parts, size_t total) {
  boost::system::error_code ec;
  if (rate_ == 0) {
    co_await asio::async_write(stream_, parts, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return fail(connection_error(ec, "sending"));
  } else {
    for (const auto& part : parts) {
      const auto* p = static_cast<const uint8_t*>(part.data());
      for (size_t done = 0; done < part.size();) {
        const size_t n = std::min(kPaceStep, part.size() - done);
        co_await pace(n);
        co_await asio::async_write(stream_, asio::buffer(p + done, n), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return fail(connection_error(ec, "sending"));
        done += n;
      }
    }
  }
  bytes_written_ += total;
  co_return Status{};
}

asio::awaitable<Status> FrameChannel::write(wire::FrameType type, ByteView body) {
  const auto header = wire::encode_frame_header(type, static_cast<uint32_t>(body.size()));
  std::vector<asio::const_buffer> parts;
  parts.push_back(asio::buffer(header));
  parts.push_back(asio::buffer(body.data(), body.size()));
  co_return co_await write_buffers(parts, header.size() + body.size());
}

asio::awaitable<Status> FrameChannel::write_encoded(ByteView frame) {
  std::vector<asio::const_buffer> parts;
  parts.push_back(asio::buffer(frame.data(), frame.size()));
  co_return co_await write_buffers(parts, frame.size());
}

asio::awaitable<Status> FrameChannel::write_json(wire::FrameType type, const json::Json& body) {
  const std::string text = json::canonical(body);
  co_return co_await write(type, as_bytes(text));
}

asio::awaitable<Status> FrameChannel::write_record(uint64_t offset, ByteView unit) {
  const size_t body = wire::kRecordOffsetSize + unit.size();
  const auto header = wire::encode_frame_header(wire::FrameType::kRecord, static_cast<uint32_t>(body));
  std::array<uint8_t, wire::kRecordOffsetSize> off;
  store_le<uint64_t>(off.data(), offset);
  std::vector<asio::const_buffer> parts;
  parts.push_back(asio::buffer(header));
  parts.push_back(asio::buffer(off));
  parts.push_back(asio::buffer(unit.data(), unit.size()));
  co_return co_await write_buffers(parts, header.size() + body);
}

asio::awaitable<Status> FrameChannel::send_error(wire::WireError code, const std::string& message) {
  const json::Json body = wire::to_json(wire::ErrorMessage{code, message});
  co_return co_await write_json(wire::FrameType::kError, body);
}

asio::awaitable<void> FrameChannel::shutdown() {
  boost::system::error_code ec;
  co_await stream_.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
  stream_.lowest_layer().close(ec);
}

}  // namespace mlfx::transport
