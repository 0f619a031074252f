#include "mlfx/transport/frame_channel.h"

#include <algorithm>

#include <cstring>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

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
  std::array<uint8_t, wire::kFrameHeaderSize> header;
  const asio::mutable_buffer header_space = asio::buffer(header);
  ErrorCode ec = co_await stream_.read(header_space);
  if (ec) co_return fail(connection_error(ec, "reading a frame"));
  auto h = wire::decode_frame_header(header, max_record);
  if (!h) {
    const wire::ErrorMessage& e = h.error();
    co_await send_error(e.code, e.message);
    co_return fail(Errc::kBadFormat, "the peer sent a bad frame: " + e.message);
  }
  // A buffer grown for a larger limit (an earlier upload's records) is not kept past it.
  if (buffer_.capacity() > FrameBuffer::room_for_unit(kIoAlignment - 1, std::max(max_record, wire::kMaxControlBody)))
    buffer_.release();
  size_t start = 0;  // of the body in buffer_
  size_t done = 0;   // bytes of the body already there
  if (h->type == wire::FrameType::kRecord && h->body_length >= wire::kRecordOffsetSize) {
    // The unit's file offset first: it says where the unit goes in the buffer.
    std::array<uint8_t, wire::kRecordOffsetSize> offset;
    const asio::mutable_buffer offset_space = asio::buffer(offset);
    ec = co_await stream_.read(offset_space);
    if (ec) co_return fail(connection_error(ec, "reading a RECORD frame"));
    start = FrameBuffer::unit_start(load_le<uint64_t>(offset.data())) - wire::kRecordOffsetSize;
    buffer_.reserve(start + h->body_length);
    std::memcpy(buffer_.data() + start, offset.data(), offset.size());
    done = offset.size();
  } else {
    buffer_.reserve(std::max<size_t>(h->body_length, 1));
  }
  const asio::mutable_buffer rest = asio::buffer(buffer_.data() + start + done, h->body_length - done);
  ec = co_await stream_.read(rest);
  if (ec) co_return fail(connection_error(ec, std::string("reading a ") + wire::frame_type_name(h->type) + " frame"));
  bytes_read_ += wire::kFrameHeaderSize + h->body_length;
  co_return Frame{h->type, ByteView(buffer_.data() + start, h->body_length)};
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

asio::awaitable<Status> FrameChannel::write_part(asio::const_buffer part, bool more_follows) {
  if (rate_ == 0) {
    const ErrorCode ec = co_await stream_.write(part, more_follows);
    if (ec) co_return fail(connection_error(ec, "sending"));
    co_return Status{};
  }
  const auto* p = static_cast<const uint8_t*>(part.data());
  for (size_t done = 0; done < part.size();) {
    const size_t n = std::min(kPaceStep, part.size() - done);
    co_await pace(n);
    const asio::const_buffer step = asio::buffer(p + done, n);
    const ErrorCode ec = co_await stream_.write(step);
    if (ec) co_return fail(connection_error(ec, "sending"));
    done += n;
  }
  co_return Status{};
}

// The frame header, a record's offset and the start of its unit go out together as one full
// TLS record rather than as three; the rest of a large part is encrypted straight from the
// caller's buffer.
asio::awaitable<Status> FrameChannel::write_buffers(const std::vector<asio::const_buffer>& parts, size_t total) {
  gather_.clear();
  size_t next = 0, skip = 0;  // the first part (and its bytes) not gathered
  for (; next < parts.size() && gather_.size() < TlsStream::kMaxRecordPayload; ++next) {
    const auto* p = static_cast<const uint8_t*>(parts[next].data());
    const size_t take = std::min(parts[next].size(), TlsStream::kMaxRecordPayload - gather_.size());
    gather_.insert(gather_.end(), p, p + take);
    if (take < parts[next].size()) {
      skip = take;
      break;
    }
  }
  const asio::const_buffer gathered = asio::buffer(gather_);
  MLFX_CO_TRY(co_await write_part(gathered, next < parts.size()));
  for (; next < parts.size(); ++next, skip = 0) {
    const asio::const_buffer rest = asio::buffer(static_cast<const uint8_t*>(parts[next].data()) + skip,
                                                 parts[next].size() - skip);
    MLFX_CO_TRY(co_await write_part(rest, next + 1 < parts.size()));
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
  const ErrorCode ignored = co_await stream_.shutdown();
  (void)ignored;
  boost::system::error_code ec;
  stream_.lowest_layer().close(ec);
}

}  // namespace mlfx::transport
