#include "upload/intake_link.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "mlfx/base/version.h"
#include "mlfx/transport/deadline.h"
#include "mlfx/transport/frame_channel.h"

// As in frame_channel.cc: only named locals in co_await expressions (gcc 12 destroys
// temporaries there twice).

namespace mlfx::agent {

namespace asio = boost::asio;
using asio::ip::tcp;
using wire::FrameType;

struct IntakeLink::Impl {
  Impl(asio::io_context& io, asio::ssl::context& ctx) : stream(io, ctx), channel(stream) {}
  transport::TlsStream stream;
  transport::FrameChannel channel;
  std::shared_ptr<transport::Deadline> deadline;
  bool open = false;
};

IntakeLink::IntakeLink(asio::io_context& io, asio::ssl::context& ctx, const IntakeTarget& target,
                       std::string device_fingerprint)
    : impl_(std::make_unique<Impl>(io, ctx)), target_(target), device_fingerprint_(std::move(device_fingerprint)) {}

IntakeLink::~IntakeLink() {
  if (impl_->deadline) impl_->deadline->stop();
}

namespace {

Error intake_refusal(const IntakeAnswer& a, std::optional<wire::WireError>* code) {
  auto e = wire::parse_error(a.body);
  if (!e) return Error(Errc::kBadFormat, "the intake sent an unreadable ERROR: " + e.error().to_string());
  if (code) *code = e->code;
  return Error(Errc::kIo, std::string("the intake refused: ") + wire::wire_error_name(e->code) + ": " + e->message);
}

// TCP and the TLS handshake under the lab CA; the intake's key, checked against the pin.
asio::awaitable<Result<crypto::VerifyKey>> open_tls(transport::TlsStream& stream, const IntakeTarget& target) {
  const std::string where = target.host + ":" + std::to_string(target.port);
  boost::system::error_code ec;
  tcp::resolver resolver(stream.get_executor());
  const std::string port = std::to_string(target.port);
  auto endpoints = co_await resolver.async_resolve(target.host, port, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return fail(Errc::kIo, "cannot resolve " + target.host + ": " + ec.message());
  co_await asio::async_connect(stream.lowest_layer(), endpoints, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return fail(transport::connection_error(ec, "connecting to the intake " + where));
  MLFX_CO_TRY(transport::expect_server_name(stream, target.host));
  ec = co_await stream.handshake(asio::ssl::stream_base::client);
  if (ec && transport::peer_revoked(stream))
    co_return fail(Errc::kUntrusted, "the intake " + where + " presented a certificate that the lab CA revoked (" +
                                         target.tls.crl + "): not talking to it");
  if (ec && transport::crl_expired(stream))
    co_return fail(Errc::kUntrusted, "the CRL " + target.tls.crl + " is past its next update: get a fresh one "
                                         "from the lab CA (mlfx ca crl)");
  if (ec) co_return fail(Errc::kUntrusted, "TLS handshake with the intake " + where + " failed: " +
                                               transport::describe(ec, &stream));
  MLFX_CO_ASSIGN(transport::PeerIdentity peer, transport::peer_identity(stream));
  if (!peer.key) co_return fail(Errc::kUntrusted, "the intake's certificate key is not an Ed25519 signing key");
  if (!target.intake_key_fingerprint.empty() && peer.key_fingerprint != target.intake_key_fingerprint)
    co_return fail(Errc::kUntrusted, "the intake's key is " + peer.key_fingerprint + ", not the pinned " +
                                         target.intake_key_fingerprint);
  co_return *peer.key;
}

}  // namespace

asio::awaitable<Status> IntakeLink::connect() {
  Impl& l = *impl_;
  l.deadline = transport::Deadline::start(l.stream, target_.timeout);
  MLFX_CO_ASSIGN(crypto::VerifyKey key, co_await open_tls(l.stream, target_));
  intake_key_ = key;
  l.open = true;
  wire::Hello hello;
  hello.agent = std::string("mlfx-agent ") + kToolVersion;
  const json::Json hello_body = wire::to_json(hello);
  MLFX_CO_ASSIGN(IntakeAnswer a, co_await exchange(FrameType::kHello, hello_body));
  if (a.type != FrameType::kWelcome)
    co_return fail(Errc::kBadFormat, std::string("the intake answered HELLO with ") + wire::frame_type_name(a.type));
  MLFX_CO_ASSIGN(welcome_, wire::parse_welcome(a.body));
  if (welcome_.intake_key_fingerprint != key.fingerprint())
    co_return fail(Errc::kUntrusted, "the intake names a key other than its certificate's");
  if (welcome_.key_fingerprint != device_fingerprint_)
    co_return fail(Errc::kUntrusted, "the intake sees device key " + welcome_.key_fingerprint +
                                         ", but this agent's key is " + device_fingerprint_);
  co_return Status{};
}

asio::awaitable<Result<IntakeAnswer>> IntakeLink::exchange(FrameType type, const json::Json& body,
                                                           std::optional<wire::WireError>* code) {
  Impl& l = *impl_;
  if (!l.open) co_return fail(Errc::kIo, "the session with the intake is closed");
  l.deadline->expire_in(target_.timeout);
  if (auto st = co_await l.channel.write_json(type, body); !st) {
    l.open = false;
    co_return fail(std::move(st).error());
  }
  auto frame = co_await l.channel.read(wire::kMaxControlBody);
  if (!frame) {
    l.open = false;
    co_return fail(std::move(frame).error());
  }
  IntakeAnswer a{frame->type, Bytes(frame->body.begin(), frame->body.end())};
  if (a.type == FrameType::kError) {
    l.open = false;
    co_return fail(intake_refusal(a, code));
  }
  co_return a;
}

asio::awaitable<void> IntakeLink::close() {
  Impl& l = *impl_;
  if (!l.deadline) co_return;
  if (l.open) {
    l.open = false;
    l.deadline->expire_in(std::chrono::seconds(2));
    co_await l.channel.shutdown();
  }
  l.deadline->stop();
}

}  // namespace mlfx::agent
