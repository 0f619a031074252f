#include "mlfx/transport/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <boost/asio/error.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "mlfx/base/bytes.h"
#include "mlfx/wire/messages.h"

namespace mlfx::transport {

// ---- The socket under OpenSSL: a BIO on the connection's descriptor ----
// OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE on a connection the
// peer reset; this one sends with MSG_NOSIGNAL, and reports the errno of a failed call.
struct SocketBioState {
  int fd = -1;
  bool eof = false;
  int error = 0;      // errno of the last failed call
  bool more = false;  // more records follow at once: TCP may hold a partial segment back
};

namespace {

SocketBioState* bio_state(BIO* b) { return static_cast<SocketBioState*>(BIO_get_data(b)); }

bool retryable(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

int socket_bio_write(BIO* b, const char* data, int len) {
  BIO_clear_retry_flags(b);
  SocketBioState* s = bio_state(b);
  const ssize_t n = ::send(s->fd, data, static_cast<size_t>(len), MSG_NOSIGNAL | (s->more ? MSG_MORE : 0));
  if (n >= 0) return static_cast<int>(n);
  s->error = errno;
  if (retryable(s->error)) BIO_set_retry_write(b);
  return -1;
}

int socket_bio_read(BIO* b, char* data, int len) {
  BIO_clear_retry_flags(b);
  SocketBioState* s = bio_state(b);
  const ssize_t n = ::recv(s->fd, data, static_cast<size_t>(len), 0);
  if (n > 0) return static_cast<int>(n);
  if (n == 0) {
    s->eof = true;
    return 0;
  }
  s->error = errno;
  if (retryable(s->error)) BIO_set_retry_read(b);
  return -1;
}

long socket_bio_ctrl(BIO* b, int cmd, long, void*) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;  // nothing is buffered here
    case BIO_CTRL_EOF:
      return bio_state(b)->eof ? 1 : 0;
    default:
      return 0;
  }
}

int socket_bio_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

const BIO_METHOD* socket_bio_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mlfx socket");
    BIO_meth_set_write(m, socket_bio_write);
    BIO_meth_set_read(m, socket_bio_read);
    BIO_meth_set_ctrl(m, socket_bio_ctrl);
    BIO_meth_set_create(m, socket_bio_create);
    return m;
  }();
  return method;
}

tl::unexpected<Error> tls_fail(const std::string& what) {
  return fail(Errc::kCrypto, what + ": " + crypto::openssl_error());
}

// ALPN in wire form: a length byte, then the protocol id.
std::string alpn_wire() {
  std::string id = wire::kAlpn;
  return std::string(1, static_cast<char>(id.size())) + id;
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  static const std::string ours = alpn_wire();
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, reinterpret_cast<const unsigned char*>(ours.data()),
                            static_cast<unsigned>(ours.size()), in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // a client that does not speak mlfx/1
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

// Checks the key file as mlfx does (owner-only, a device key: never a lab key, whose X25519
// half opens evidence) before OpenSSL reads it.
Status use_identity(SSL_CTX* ctx, const TlsFiles& f) {
  MLFX_ASSIGN(crypto::SecretKeyFile key, crypto::load_secret_key_file(f.key));
  if (key.kind != crypto::KeyKind::kDevice)
    return fail(Errc::kInvalidArgument, f.key + " is a lab key; a TLS identity must be a device-kind key "
                                                "(mlfx keys gen --kind device)");
  if (SSL_CTX_use_certificate_chain_file(ctx, f.cert.c_str()) != 1)
    return tls_fail("cannot read certificate " + f.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, f.key.c_str(), SSL_FILETYPE_PEM) != 1)
    return tls_fail("cannot read private key " + f.key);
  if (SSL_CTX_check_private_key(ctx) != 1)
    return fail(Errc::kInvalidArgument, "certificate " + f.cert + " is not for the key in " + f.key);
  if (SSL_CTX_load_verify_locations(ctx, f.ca.c_str(), nullptr) != 1)
    return tls_fail("cannot read CA certificate " + f.ca);
  return {};
}

Result<TlsContext> new_context(asio::ssl::context::method method) {
  auto ctx = std::make_shared<asio::ssl::context>(method);
  SSL_CTX* c = ctx->native_handle();
  if (SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) != 1) return tls_fail("cannot require TLS 1.3");
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION);
  return ctx;
}

Status load_crl(SSL_CTX* c, const std::string& path) {
  BIO* bio = BIO_new_file(path.c_str(), "r");
  if (!bio) return tls_fail("cannot read CRL " + path);
  X509_CRL* crl = PEM_read_bio_X509_CRL(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!crl) return tls_fail("cannot parse CRL " + path);
  X509_STORE* store = SSL_CTX_get_cert_store(c);
  int ok = X509_STORE_add_crl(store, crl);
  X509_CRL_free(crl);
  if (ok != 1) return tls_fail("cannot use CRL " + path);
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  return {};
}

}  // namespace

// ---- TlsStream ----

TlsStream::TlsStream(asio::io_context& io, asio::ssl::context& ctx) : socket_(io) {
  ssl_ = SSL_new(ctx.native_handle());
}

TlsStream::TlsStream(asio::ip::tcp::socket socket, asio::ssl::context& ctx) : socket_(std::move(socket)) {
  ssl_ = SSL_new(ctx.native_handle());
}

TlsStream::~TlsStream() {
  if (ssl_) SSL_free(ssl_);  // and its BIO, before the state the BIO points to
}

// Binds OpenSSL to the connected socket (a client's socket exists only once it connects).
void TlsStream::attach() {
  if (bio_state_) return;
  boost::system::error_code ignored;
  socket_.native_non_blocking(true, ignored);
  bio_state_ = std::make_unique<SocketBioState>(SocketBioState{socket_.native_handle(), false, 0, false});
  BIO* bio = BIO_new(socket_bio_method());
  BIO_set_data(bio, bio_state_.get());
  SSL_set_bio(ssl_, bio, bio);  // one BIO for both directions: SSL takes the one reference
  SSL_set_mode(ssl_, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_read_ahead(ssl_, 1);
  SSL_set_default_read_buffer_len(ssl_, kReadAhead);
}

TlsStream::Want TlsStream::classify(int result, ErrorCode* ec) {
  const int err = SSL_get_error(ssl_, result);
  const unsigned long queued = ERR_peek_error();
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return Want::kRead;
    case SSL_ERROR_WANT_WRITE:
      return Want::kWrite;
    case SSL_ERROR_ZERO_RETURN:
      *ec = asio::error::eof;
      return Want::kNothing;
    case SSL_ERROR_SYSCALL:
      if (queued != 0) break;
      if (bio_state_ && bio_state_->error != 0 && !bio_state_->eof)
        *ec = ErrorCode(bio_state_->error, boost::system::system_category());
      else
        *ec = asio::ssl::error::stream_truncated;
      return Want::kNothing;
    default:
      break;
  }
  if (ERR_GET_LIB(queued) == ERR_LIB_SSL && ERR_GET_REASON(queued) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
    *ec = asio::ssl::error::stream_truncated;
  else if (queued != 0)
    *ec = ErrorCode(static_cast<int>(queued), asio::error::get_ssl_category());
  else
    *ec = asio::ssl::error::stream_truncated;
  return Want::kNothing;
}

asio::awaitable<bool> TlsStream::wait(Want want, uint64_t cancels_at_start, ErrorCode* ec) {
  ErrorCode waited;
  if (cancels_ == cancels_at_start) {
    const auto type = want == Want::kRead ? asio::socket_base::wait_read : asio::socket_base::wait_write;
    co_await socket_.async_wait(type, asio::redirect_error(asio::use_awaitable, waited));
  }
  if (!waited && cancels_ != cancels_at_start) waited = asio::error::operation_aborted;
  if (waited) *ec = waited;
  co_return !waited;
}

void TlsStream::begin_call() {
  ERR_clear_error();
  bio_state_->error = 0;
}

void TlsStream::cancel() {
  ++cancels_;
  boost::system::error_code ignored;
  socket_.cancel(ignored);
}

asio::awaitable<ErrorCode> TlsStream::handshake(asio::ssl::stream_base::handshake_type type) {
  const uint64_t at = cancels_;
  attach();
  if (type == asio::ssl::stream_base::client)
    SSL_set_connect_state(ssl_);
  else
    SSL_set_accept_state(ssl_);
  for (;;) {
    begin_call();
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) co_return ErrorCode{};
    ErrorCode ec;
    const Want want = classify(r, &ec);
    if (want == Want::kNothing) co_return ec;
    if (!co_await wait(want, at, &ec)) co_return ec;
  }
}

asio::awaitable<ErrorCode> TlsStream::read(asio::mutable_buffer buffer) {
  const uint64_t at = cancels_;
  attach();
  auto* p = static_cast<uint8_t*>(buffer.data());
  size_t left = buffer.size();
  while (left > 0) {
    size_t got = 0;
    begin_call();
    const int r = SSL_read_ex(ssl_, p, left, &got);
    if (r == 1) {
      p += got;
      left -= got;
      continue;
    }
    ErrorCode ec;
    const Want want = classify(r, &ec);
    if (want == Want::kNothing) co_return ec;
    if (!co_await wait(want, at, &ec)) co_return ec;
  }
  co_return ErrorCode{};
}

asio::awaitable<ErrorCode> TlsStream::write(asio::const_buffer buffer, bool more_follows) {
  const uint64_t at = cancels_;
  attach();
  const auto* p = static_cast<const uint8_t*>(buffer.data());
  size_t left = buffer.size();
  // Whole records go out with MSG_MORE, so TCP packs them into full segments (a quarter of
  // the packets on loopback); the last record of the last write pushes them.
  const size_t last = more_follows ? 0 : (left % kMaxRecordPayload ? left % kMaxRecordPayload : kMaxRecordPayload);
  while (left > 0) {
    const size_t chunk = left > last ? left - last : left;
    bio_state_->more = left > last;
    // After WANT_WRITE, OpenSSL resumes the same call: it is repeated with the same arguments.
    size_t put = 0;
    begin_call();
    const int r = SSL_write_ex(ssl_, p, chunk, &put);
    if (r == 1) {
      p += put;
      left -= put;
      continue;
    }
    ErrorCode ec;
    const Want want = classify(r, &ec);
    if (want == Want::kNothing) co_return ec;
    if (!co_await wait(want, at, &ec)) co_return ec;
  }
  bio_state_->more = false;
  co_return ErrorCode{};
}

asio::awaitable<ErrorCode> TlsStream::shutdown() {
  const uint64_t at = cancels_;
  attach();
  bool sent = false;
  for (;;) {
    begin_call();
    const int r = SSL_shutdown(ssl_);
    if (r == 1) co_return ErrorCode{};
    if (r == 0 && !sent) {  // close_notify sent; the next call waits for the peer's
      sent = true;
      continue;
    }
    ErrorCode ec;
    const Want want = classify(r, &ec);
    if (want == Want::kNothing) co_return ec;
    if (!co_await wait(want, at, &ec)) co_return ec;
  }
}

Result<TlsContext> make_server_context(const TlsFiles& files) {
  MLFX_ASSIGN(TlsContext ctx, new_context(asio::ssl::context::tls_server));
  SSL_CTX* c = ctx->native_handle();
  MLFX_TRY(use_identity(c, files));
  if (!files.crl.empty()) MLFX_TRY(load_crl(c, files.crl));
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_alpn_select_cb(c, select_alpn, nullptr);
  // Client certificates must be for client authentication (device certificates are).
  SSL_CTX_set_purpose(c, X509_PURPOSE_SSL_CLIENT);
  return ctx;
}

Result<TlsContext> make_client_context(const TlsFiles& files) {
  MLFX_ASSIGN(TlsContext ctx, new_context(asio::ssl::context::tls_client));
  SSL_CTX* c = ctx->native_handle();
  MLFX_TRY(use_identity(c, files));
  if (!files.crl.empty()) MLFX_TRY(load_crl(c, files.crl));
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_purpose(c, X509_PURPOSE_SSL_SERVER);
  const std::string alpn = alpn_wire();
  if (SSL_CTX_set_alpn_protos(c, reinterpret_cast<const unsigned char*>(alpn.data()),
                              static_cast<unsigned>(alpn.size())) != 0)
    return tls_fail("cannot set ALPN");
  return ctx;
}

Status expect_server_name(TlsStream& stream, const std::string& host) {
  SSL* ssl = stream.native_handle();
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  if (!ec) {
    if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1) return tls_fail("bad address " + host);
    return {};
  }
  if (SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) return tls_fail("bad host name " + host);
  if (X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0) != 1) return tls_fail("bad host name " + host);
  return {};
}

Result<PeerIdentity> peer_identity(TlsStream& stream) {
  X509* cert = SSL_get0_peer_certificate(stream.native_handle());
  if (!cert) return fail(Errc::kUntrusted, "the peer presented no certificate");
  PeerIdentity id;
  char cn[256] = {};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0) id.id = cn;
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  id.serial = to_hex(ByteView(serial->data, static_cast<size_t>(serial->length)));
  EVP_PKEY* pub = X509_get_pubkey(cert);  // a new reference
  if (!pub) return tls_fail("cannot read the peer's public key");
  crypto::PkeyPtr key(pub, EVP_PKEY_free);
  if (EVP_PKEY_get_id(pub) == EVP_PKEY_ED25519) {
    MLFX_ASSIGN(crypto::VerifyKey k, crypto::VerifyKey::from_pkey(key));
    id.key_fingerprint = k.fingerprint();
    id.key = std::move(k);
  } else {
    return fail(Errc::kUntrusted, "the peer's certificate key is not Ed25519, so it is not an mlfx key");
  }
  return id;
}

std::string describe(const boost::system::error_code& ec, TlsStream* stream) {
  std::string text = ec.message();
  if (ec.category() == asio::error::get_ssl_category()) {
    char buf[256];
    ERR_error_string_n(static_cast<unsigned long>(ec.value()), buf, sizeof buf);
    text = buf;
  }
  if (stream) {
    long v = SSL_get_verify_result(stream->native_handle());
    if (v != X509_V_OK) text += " (certificate: " + std::string(X509_verify_cert_error_string(v)) + ")";
  }
  return text;
}

bool peer_revoked(TlsStream& stream) {
  return SSL_get_verify_result(stream.native_handle()) == X509_V_ERR_CERT_REVOKED;
}

bool crl_expired(TlsStream& stream) {
  return SSL_get_verify_result(stream.native_handle()) == X509_V_ERR_CRL_HAS_EXPIRED;
}

}  // namespace mlfx::transport
