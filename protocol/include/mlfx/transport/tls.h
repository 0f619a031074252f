// TLS 1.3 mutual authentication under the lab CA (wire-protocol.md §2), on Boost.Asio.
// Contexts are built once and shared by connections; the intake builds a new one when the
// CRL file changes, so a revocation takes effect without a restart.
#pragma once

#include <utility>  // before asio: Boost 1.74's awaitable.hpp uses std::exchange

#include <memory>
#include <string>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>

#include "mlfx/base/result.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::transport {

namespace asio = boost::asio;
using TlsStream = asio::ssl::stream<asio::ip::tcp::socket>;
using TlsContext = std::shared_ptr<asio::ssl::context>;

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
