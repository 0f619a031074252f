// A client that speaks raw frames to a real `mlfx serve` over the project's TLS, and a bundle
// file cut into the units it sends: for tests that break the protocol on purpose.
#pragma once

#include "mlfx/transport/tls.h"  // first: it includes <utility> before any asio header

#include <openssl/ssl.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "intake/intake_lab.h"
#include "mlfx/wire/messages.h"

namespace mlfx::testing {

namespace asio = boost::asio;
using transport::TlsStream;
using wire::FrameType;
using namespace std::chrono_literals;

// ---- a bundle file cut into its units (bundle-format.md §4-8), without the bundle library ----

struct Unit {
  uint64_t offset = 0, size = 0;
  bool chunk = false;
};

struct RawBundle {
  std::string bytes;
  std::vector<Unit> metadata, chunks;  // file order
  wire::Offer offer;
  ByteView unit(const Unit& u) const { return as_bytes(bytes).subspan(u.offset, u.size); }
};

inline RawBundle cut(const std::string& path) {
  RawBundle b;
  b.bytes = read_file(path);
  const auto* p = reinterpret_cast<const uint8_t*>(b.bytes.data());
  b.metadata.push_back({0, 64, false});
  for (uint64_t off = 64; off + 32 <= b.bytes.size();) {
    const uint64_t size = 32 + load_le<uint64_t>(p + off + 8);
    const bool chunk = load_le<uint32_t>(p + off) == 0x4b4e4843;  // "CHNK"
    (chunk ? b.chunks : b.metadata).push_back({off, size, chunk});
    off += size;
  }
  b.offer.bundle_id = to_hex(ByteView(p + 16, 16));
  b.offer.chunk_size = load_le<uint32_t>(p + 32);
  b.offer.file_size = b.bytes.size();
  b.offer.bundle_digest = IntakeLab::digest_of(path);
  return b;
}

// ---- a client that speaks raw frames over the project's TLS ----

struct In {
  bool ok = false;  // a frame arrived
  FrameType type{};
  std::string body;
  std::string error;  // why not
  std::string code() const {
    if (!ok || type != FrameType::kError) return "";
    auto e = wire::parse_error(as_bytes(body));
    return e ? wire::wire_error_name(e->code) : "?";
  }
  std::string describe() const {
    return ok ? std::string(wire::frame_type_name(type)) + " " + body.substr(0, 300) : "no frame: " + error;
  }
};

class RawClient {
 public:
  RawClient(int port, transport::TlsContext ctx) : port_(port), ctx_(std::move(ctx)), stream_(io_, *ctx_) {}

  static transport::TlsContext context(const std::string& ca, const Device& d) {
    auto ctx = transport::make_client_context({ca, d.cert, d.key, ""});
    EXPECT_TRUE(ctx) << ctx.error().to_string();
    return *ctx;
  }
  // TLS 1.3 with the right ALPN and trust, but no client certificate at all.
  static transport::TlsContext context_without_certificate(const std::string& ca) {
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    SSL_CTX* c = ctx->native_handle();
    SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
    SSL_CTX_load_verify_locations(c, ca.c_str(), nullptr);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    const std::string alpn = std::string(1, char(std::strlen(wire::kAlpn))) + wire::kAlpn;
    SSL_CTX_set_alpn_protos(c, reinterpret_cast<const unsigned char*>(alpn.data()), unsigned(alpn.size()));
    return ctx;
  }

  // "" when connected and the handshake went through (on the client's side).
  std::string connect() {
    return drive<std::string>([this]() -> asio::awaitable<std::string> {
      boost::system::error_code ec;
      asio::ip::tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_));
      co_await stream_.lowest_layer().async_connect(ep, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return "connect: " + ec.message();
      if (auto st = transport::expect_server_name(stream_, "127.0.0.1"); !st) co_return st.error().to_string();
      ec = co_await stream_.handshake(asio::ssl::stream_base::client);
      if (ec) co_return "handshake: " + transport::describe(ec, &stream_);
      co_return "";
    }(), 10s, "handshake timed out");
  }
  // HELLO, then the WELCOME's max_record.
  uint32_t hello() {
    EXPECT_EQ(send_json(FrameType::kHello, wire::to_json(wire::Hello{{1}, "refusal-test"})), "");
    In w = read();
    EXPECT_TRUE(w.ok && w.type == FrameType::kWelcome) << w.describe();
    auto welcome = wire::parse_welcome(as_bytes(w.body));
    return welcome ? welcome->max_record : 0;
  }

  // "" when written.
  std::string send(ByteView bytes) {
    return drive<std::string>([this, bytes]() -> asio::awaitable<std::string> {
      boost::system::error_code ec;
      const asio::const_buffer out = asio::buffer(bytes.data(), bytes.size());
      ec = co_await stream_.write(out);
      co_return ec ? "write: " + ec.message() : "";
    }(), 10s, "write timed out");
  }
  std::string send(const std::string& bytes) { return send(as_bytes(bytes)); }
  std::string send_frame(FrameType type, ByteView body, uint16_t flags = 0) {
    Bytes f = wire::encode_frame(type, body);
    store_le<uint16_t>(f.data() + 6, flags);
    return send(f);
  }
  std::string send_json(FrameType type, const ::mlfx::json::Json& body) {
    return send(wire::encode_json_frame(type, body));
  }
  std::string send_record(const RawBundle& b, const Unit& u) {
    return send(wire::encode_frame(FrameType::kRecord, wire::encode_record_body(u.offset, b.unit(u))));
  }

  In read(std::chrono::milliseconds timeout = 5s) {
    return drive<In>([this]() -> asio::awaitable<In> {
      In in;
      boost::system::error_code ec;
      std::array<uint8_t, wire::kFrameHeaderSize> h;
      const asio::mutable_buffer header_space = asio::buffer(h);
      ec = co_await stream_.read(header_space);
      if (ec) {
        in.error = ec.message();
        co_return in;
      }
      const uint32_t len = load_le<uint32_t>(h.data());
      if (len > (1u << 20)) {
        in.error = "absurd frame length from the server";
        co_return in;
      }
      in.body.resize(len);
      const asio::mutable_buffer body_space = asio::buffer(in.body);
      ec = co_await stream_.read(body_space);
      if (ec) {
        in.error = ec.message();
        co_return in;
      }
      in.ok = true;
      in.type = FrameType(load_le<uint16_t>(h.data() + 4));
      co_return in;
    }(), timeout, In{false, FrameType{}, "", "timed out"});
  }

  // The server's ERROR, then the end of this connection.
  void expect_refused(const std::string& code, std::chrono::milliseconds timeout = 5s) {
    In e = read(timeout);
    EXPECT_EQ(e.code(), code) << e.describe();
    In after = read(5s);
    EXPECT_FALSE(after.ok) << "the connection goes on after the ERROR: " << after.describe();
    EXPECT_NE(after.error, "timed out") << "the server did not close the connection";
  }

 private:
  // Runs one operation, cancelling it (by closing the socket) when it takes too long.
  template <class T>
  T drive(asio::awaitable<T> op, std::chrono::milliseconds timeout, T on_timeout) {
    std::optional<T> out;
    asio::co_spawn(io_, std::move(op), [&](std::exception_ptr e, T v) {
      if (!e) out = std::move(v);
    });
    io_.restart();
    io_.run_for(timeout);
    if (!out) {
      boost::system::error_code ec;
      stream_.lowest_layer().close(ec);
      io_.restart();
      io_.run();  // the operation ends with operation_aborted
      return on_timeout;
    }
    return *out;
  }

  int port_;
  transport::TlsContext ctx_;
  asio::io_context io_;
  TlsStream stream_;
};

}  // namespace mlfx::testing
