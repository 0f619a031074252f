#include "mlfx/transport/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cstring>

#include "mlfx/base/bytes.h"
#include "mlfx/wire/messages.h"

namespace mlfx::transport {
namespace {

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
