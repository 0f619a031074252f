// TLS 1.3 mutual authentication under the lab CA (wire-protocol.md §2), on Boost.Asio.
// Contexts are built once and shared by connections; the intake builds a new one when the
// CRL file changes, so a revocation takes effect without a restart.
#pragma once

#include <utility>  // before asio: Boost 1.74's awaitable.hpp uses std::exchange

#include <cstdint>
#include <memory>
#include <string>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream_base.hpp>

#include "mlfx/base/result.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::transport {

namespace asio = boost::asio;
using TlsContext = std::shared_ptr<asio::ssl::context>;
using ErrorCode = boost::system::error_code;
struct SocketBioState;

// A TLS connection over a TCP socket, with C++20 coroutines. OpenSSL reads and writes the
// socket itself (no memory-BIO pair in between, unlike asio::ssl::stream): each receive takes
// as many records as the socket holds (up to kReadAhead bytes) and a read or a write runs as
// many records as it can before it waits, so bulk transfers cost one copy less per side and
// one wake-up per socket buffer, not one per 16 KiB record. One read and one write may be in
// progress at once (from two coroutines of one strand).
class TlsStream {
 public:
  using executor_type = asio::ip::tcp::socket::executor_type;
  static constexpr int kReadAhead = 64 << 10;
  static constexpr size_t kMaxRecordPayload = 16u << 10;  // plaintext bytes in one TLS record

  TlsStream(asio::io_context& io, asio::ssl::context& ctx);
  TlsStream(asio::ip::tcp::socket socket, asio::ssl::context& ctx);
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;
  ~TlsStream();

  SSL* native_handle() { return ssl_; }
  asio::ip::tcp::socket& next_layer() { return socket_; }
  asio::ip::tcp::socket& lowest_layer() { return socket_; }
  executor_type get_executor() { return socket_.get_executor(); }

  // Each returns an empty error code on success. Errors: asio::error::eof (the peer's
  // close_notify), asio::ssl::error::stream_truncated (the connection ended without one),
  // system errors of the socket, OpenSSL errors in asio's ssl category (for describe()),
  // asio::error::operation_aborted after cancel().
  asio::awaitable<ErrorCode> handshake(asio::ssl::stream_base::handshake_type type);
  // Reads exactly buffer.size() bytes.
  asio::awaitable<ErrorCode> read(asio::mutable_buffer buffer);
  // Writes all of `buffer`; with more_follows, TCP may hold back its last partial segment
  // until the next write.
  asio::awaitable<ErrorCode> write(asio::const_buffer buffer, bool more_follows = false);
  // Sends close_notify and waits (bounded by the caller's deadline) for the peer's answer or
  // its end of the connection.
  asio::awaitable<ErrorCode> shutdown();
  // Aborts the operations in progress, also those between two waits (a Deadline's expiry).
  // Operations started later run normally.
  void cancel();

 private:
  enum class Want { kNothing, kRead, kWrite };
  void attach();
  void begin_call();
  // What an OpenSSL call that returned `result` waits for, or the error it ended with.
  Want classify(int result, ErrorCode* ec);
  // Waits until the socket is ready for `want`; false (and *ec set) when cancelled.
  asio::awaitable<bool> wait(Want want, uint64_t cancels_at_start, ErrorCode* ec);

  asio::ip::tcp::socket socket_;
  std::unique_ptr<SocketBioState> bio_state_;  // declared before ssl_: freed after it
  SSL* ssl_ = nullptr;
  uint64_t cancels_ = 0;
};

// PEM files of one side of a connection.
struct TlsFiles {
  std::string ca;    // the lab CA certificate: the only trust anchor
  std::string cert;  // this side's certificate, issued by the lab CA
  std::string key;   // its private key: an mlfx device key file (0600)
  std::string crl;   // the CA's revocation list: the server checks every client against it, the
                     // client the server (empty: not checked)
};

// Server: TLS 1.3 only, ALPN mlfx/1 required, a client certificate required and checked
// against the CA and the CRL.
Result<TlsContext> make_server_context(const TlsFiles& files);
// Client: TLS 1.3 only, ALPN mlfx/1, trusts the lab CA alone (never the system store), and
// refuses a server certificate the CRL revokes when one is given.
Result<TlsContext> make_client_context(const TlsFiles& files);
// Per connection, before the handshake: the name or IP the server certificate must carry.
Status expect_server_name(TlsStream& stream, const std::string& host);

// Who is on the other end of an established connection, from its verified certificate.
struct PeerIdentity {
  std::string id;               // the certificate's common name: the device id or intake name
  std::string key_fingerprint;  // sha256: of the certificate's SubjectPublicKeyInfo
  std::string serial;           // hex
  std::optional<crypto::VerifyKey> key;  // set when the key is Ed25519 (device and intake keys are)
};
Result<PeerIdentity> peer_identity(TlsStream& stream);

// The text of an asio/OpenSSL error, with the verification failure when there is one.
std::string describe(const boost::system::error_code& ec, TlsStream* stream = nullptr);
// Whether the handshake failed because the CRL revokes the peer's certificate, or because the
// CRL itself is past its nextUpdate.
bool peer_revoked(TlsStream& stream);
bool crl_expired(TlsStream& stream);

}  // namespace mlfx::transport
