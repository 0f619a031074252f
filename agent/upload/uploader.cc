#include "upload/uploader.h"

#include <random>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "mlfx/base/version.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/crypto/keys.h"
#include "mlfx/transport/deadline.h"
#include "mlfx/transport/frame_channel.h"

namespace mlfx::agent {

namespace asio = boost::asio;
using asio::ip::tcp;
using transport::TlsStream;
using wire::FrameType;
using Clock = std::chrono::steady_clock;

json::Json UploadOutcome::to_json() const {
  json::Json j = {{"name", name},           {"bundle_id", bundle_id},     {"result", result},
                  {"file_size", file_size}, {"held_before", held_before}, {"sent_bytes", sent_bytes},
                  {"sent_units", sent_units}, {"seconds", seconds},
                  {"intake_crl", crl_checked ? "checked" : "not checked"}};
  if (!error.empty()) j["error"] = error;
  if (code) j["code"] = wire::wire_error_name(*code);
  return j;
}

json::Json PassReport::to_json() const {
  json::Json list = json::Json::array();
  for (const auto& u : uploads) list.push_back(u.to_json());
  json::Json j = {{"ok", ok}, {"uploads", list}};
  if (!error.empty()) j["error"] = error;
  return j;
}

std::chrono::milliseconds backoff_delay(unsigned failures, std::chrono::milliseconds base,
                                        std::chrono::milliseconds cap) {
  const unsigned shift = std::min(failures, 30u);
  const auto ceiling = std::min<int64_t>(cap.count(), base.count() << shift);
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(ceiling, 0))(rng));
}

namespace {

// A frame kept beyond the channel's next read.
struct Answer {
  FrameType type;
  Bytes body;
};

// One connection to the intake.
struct Link {
  Link(asio::io_context& io, asio::ssl::context& ctx) : stream(io, ctx), channel(stream) {}
  TlsStream stream;
  transport::FrameChannel channel;
  std::shared_ptr<transport::Deadline> deadline;
  wire::Welcome welcome;
  std::optional<crypto::VerifyKey> intake_key;
  bool open = false;

  ~Link() {
    if (deadline) deadline->stop();
  }
};

class Shipper {
 public:
  Shipper(Spool& spool, const IntakeTarget& target, const UploadEvents& events, std::string device_fingerprint)
      : spool_(spool), target_(target), events_(events), device_fingerprint_(std::move(device_fingerprint)) {}

  asio::awaitable<void> pass(asio::io_context& io, asio::ssl::context& ctx, PassReport& report) {
    auto queue = spool_.queue();
    if (!queue) {
      report.ok = false;
      report.error = queue.error().to_string();
      co_return;
    }
    std::unique_ptr<Link> link;
    for (SpoolEntry& e : *queue) {
      if (!link || !link->open) {
        link = std::make_unique<Link>(io, ctx);
        if (auto st = co_await connect(*link); !st) {
          report.ok = false;
          report.error = st.error().to_string();
          (void)spool_.record_attempt(e, report.error);
          break;
        }
      }
      UploadOutcome out = co_await upload(*link, e);
      if (out.result == "failed") {
        (void)spool_.record_attempt(e, out.error);
        report.ok = false;
        report.error = out.error;
      } else if (out.result == "rejected") {
        if (auto st = spool_.reject(e, out.error); !st) out.error += "; and " + st.error().to_string();
      }
      report.uploads.push_back(out);
      if (events_) events_(out);
      if (!report.ok) break;
    }
    if (link && link->open) {
      link->deadline->expire_in(std::chrono::seconds(2));
      co_await link->channel.shutdown();
    }
  }

 private:
  Error intake_error(const Answer& a, std::optional<wire::WireError>* code) {
    auto e = wire::parse_error(a.body);
    if (!e) return Error(Errc::kBadFormat, "the intake sent an unreadable ERROR: " + e.error().to_string());
    *code = e->code;
    return Error(Errc::kIo, std::string("the intake refused: ") + wire::wire_error_name(e->code) + ": " + e->message);
  }

  asio::awaitable<Result<Answer>> read_answer(Link& l) {
    l.deadline->expire_in(target_.timeout);
    MLFX_CO_ASSIGN(transport::Frame f, co_await l.channel.read(wire::kMaxControlBody));
    co_return Answer{f.type, Bytes(f.body.begin(), f.body.end())};
  }

  asio::awaitable<Status> connect(Link& l) {
    const std::string where = target_.host + ":" + std::to_string(target_.port);
    boost::system::error_code ec;
    l.deadline = transport::Deadline::start(l.stream, target_.timeout);
    l.channel.set_rate_limit(target_.bandwidth);
    tcp::resolver resolver(l.stream.get_executor());
    const std::string port = std::to_string(target_.port);  // named locals only in co_await (frame_channel.cc)
    auto endpoints = co_await resolver.async_resolve(target_.host, port, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return fail(Errc::kIo, "cannot resolve " + target_.host + ": " + ec.message());
    co_await asio::async_connect(l.stream.lowest_layer(), endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return fail(transport::connection_error(ec, "connecting to the intake " + where));
    MLFX_CO_TRY(transport::expect_server_name(l.stream, target_.host));
    ec = co_await l.stream.handshake(asio::ssl::stream_base::client);
    if (ec && transport::peer_revoked(l.stream))
      co_return fail(Errc::kUntrusted, "the intake " + where + " presented a certificate that the lab CA revoked (" +
                                           target_.tls.crl + "): not shipping to it");
    if (ec && transport::crl_expired(l.stream))
      co_return fail(Errc::kUntrusted, "the CRL " + target_.tls.crl + " is past its next update: get a fresh one "
                                           "from the lab CA (mlfx ca crl) before shipping");
    if (ec) co_return fail(Errc::kUntrusted, "TLS handshake with the intake " + where + " failed: " +
                                                 transport::describe(ec, &l.stream));
    MLFX_CO_ASSIGN(transport::PeerIdentity peer, transport::peer_identity(l.stream));
    if (!peer.key) co_return fail(Errc::kUntrusted, "the intake's certificate key cannot sign receipts");
    if (!target_.intake_key_fingerprint.empty() && peer.key_fingerprint != target_.intake_key_fingerprint)
      co_return fail(Errc::kUntrusted, "the intake's key is " + peer.key_fingerprint + ", not the pinned " +
                                           target_.intake_key_fingerprint);
    l.intake_key = peer.key;
    wire::Hello hello;
    hello.agent = std::string("mlfx-agent ") + kToolVersion;
    const json::Json hello_body = wire::to_json(hello);
    MLFX_CO_TRY(co_await l.channel.write_json(FrameType::kHello, hello_body));
    MLFX_CO_ASSIGN(Answer a, co_await read_answer(l));
    std::optional<wire::WireError> code;
    if (a.type == FrameType::kError) co_return fail(intake_error(a, &code));
    if (a.type != FrameType::kWelcome)
      co_return fail(Errc::kBadFormat, std::string("the intake answered HELLO with ") + wire::frame_type_name(a.type));
    MLFX_CO_ASSIGN(l.welcome, wire::parse_welcome(a.body));
    if (l.welcome.intake_key_fingerprint != peer.key_fingerprint)
      co_return fail(Errc::kUntrusted, "the intake names a receipt key other than its certificate's");
    if (l.welcome.key_fingerprint != device_fingerprint_)
      co_return fail(Errc::kUntrusted, "the intake sees device key " + l.welcome.key_fingerprint +
                                           ", but this agent's key is " + device_fingerprint_);
    l.open = true;
    co_return Status{};
  }

  // Checks a receipt against what was sent, under the intake key of this connection.
  Status check_receipt(const Link& l, const SpoolEntry& e, const wire::SignedReceipt& r) {
    if (!l.intake_key->verify(wire::receipt_signing_message(r.receipt), r.signature))
      return fail(Errc::kCorrupt, "the intake's receipt signature does not verify");
    if (r.receipt.bundle_digest != e.bundle_digest || r.receipt.bundle_id != e.bundle_id ||
        r.receipt.file_size != e.file_size)
      return fail(Errc::kCorrupt, "the receipt is for another bundle (" + r.receipt.bundle_digest + ")");
    if (r.receipt.device_key_fingerprint != device_fingerprint_)
      return fail(Errc::kCorrupt, "the receipt names another device key");
    if (r.receipt.intake_key_fingerprint != l.intake_key->fingerprint())
      return fail(Errc::kCorrupt, "the receipt names another intake key");
    return {};
  }

  asio::awaitable<UploadOutcome> upload(Link& l, SpoolEntry& e) {
    const auto start = Clock::now();
    UploadOutcome out;
    out.crl_checked = !target_.tls.crl.empty();
    out.name = e.name;
    out.bundle_id = e.bundle_id;
    out.file_size = e.file_size;
    auto finish = [&](std::string result, std::string error = "") {
      out.result = std::move(result);
      out.error = std::move(error);
      out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
      return out;
    };
    // A permanent refusal moves the bundle aside; anything else is tried again later.
    auto refused = [&](const Error& err, std::optional<wire::WireError> code) {
      l.open = false;
      out.code = code;
      const bool permanent = code && !wire::wire_error_is_retryable(*code);
      return finish(permanent ? "rejected" : "failed", err.to_string());
    };
    // Opened once, without following a link; the reader and the sender read this very file.
    auto file = spool_.open_entry(e);
    if (!file) co_return finish("failed", file.error().to_string());
    auto reader = bundle::BundleReader::open(file->path());
    if (!reader) co_return finish("rejected", "the spooled bundle is damaged: " + reader.error().to_string());
    wire::Offer offer{e.bundle_id, e.file_size, e.bundle_digest, e.chunk_size};
    const json::Json offer_body = wire::to_json(offer);
    if (auto st = co_await l.channel.write_json(FrameType::kOffer, offer_body); !st)
      co_return refused(st.error(), std::nullopt);
    auto a = co_await read_answer(l);
    if (!a) co_return refused(a.error(), std::nullopt);
    std::optional<wire::WireError> code;
    if (a->type == FrameType::kError) co_return refused(intake_error(*a, &code), code);
    if (a->type != FrameType::kStatus)
      co_return refused(Error(Errc::kBadFormat, "the intake answered OFFER with something else"), std::nullopt);
    auto status = wire::parse_status(a->body);
    if (!status) co_return refused(status.error(), std::nullopt);
    if (status->state == wire::UploadState::kStored) {
      if (!status->receipt) co_return refused(Error(Errc::kBadFormat, "'stored' without a receipt"), std::nullopt);
      if (auto st = check_receipt(l, e, *status->receipt); !st) co_return finish("failed", st.error().to_string());
      if (auto st = spool_.complete(e, *status->receipt); !st) co_return finish("failed", st.error().to_string());
      co_return finish("duplicate");
    }

    // The units the intake lacks: metadata first (it checks those before any chunk), then chunks.
    std::vector<bundle::Unit> units = reader->metadata_units();
    for (const auto& stream : reader->layout())
      for (const auto& c : stream.chunks)
        units.push_back({c.record_offset, bundle::kRecordHeaderSize + c.plaintext_size + crypto::kTagSize});
    auto held = [&](const bundle::Unit& u) {
      for (const auto& r : status->have)
        if (u.offset >= r.offset && u.offset + u.size <= r.offset + r.length) return true;
      return false;
    };
    for (const auto& r : status->have) out.held_before += r.length;

    // The intake answers a run of records only at its end (RECEIPT) or on an error, which it
    // may send at any time: listen while sending.
    std::optional<Result<Answer>> answer;
    asio::steady_timer answered(l.stream.get_executor(), Clock::time_point::max());
    asio::co_spawn(l.stream.get_executor(), listen(&l, &answer, &answered), asio::detached);
    Status sending;
    Bytes buf;
    for (const bundle::Unit& u : units) {
      if (answer) break;
      if (held(u)) continue;
      buf.resize(u.size);
      if (auto st = file->pread_exact(u.offset, buf.data(), buf.size()); !st) {
        // The spooled file cannot be read: give up this connection, keep the bundle queued.
        boost::system::error_code ec;
        l.stream.lowest_layer().close(ec);
        if (!answer) co_await answered.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        l.open = false;
        co_return finish("failed", st.error().to_string());
      }
      l.deadline->expire_in(target_.timeout);
      if (sending = co_await l.channel.write_record(u.offset, buf); !sending) break;
      out.sent_bytes += u.size;
      ++out.sent_units;
    }
    l.deadline->expire_in(target_.timeout);
    if (!answer) {
      boost::system::error_code ec;
      co_await answered.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    Result<Answer>& reply = *answer;
    if (!reply) co_return refused(sending ? reply.error() : sending.error(), std::nullopt);
    if (reply->type == FrameType::kError) co_return refused(intake_error(*reply, &code), code);
    if (reply->type != FrameType::kReceipt)
      co_return refused(Error(Errc::kBadFormat, std::string("the intake sent ") + wire::frame_type_name(reply->type) +
                                                    " instead of a receipt"), std::nullopt);
    auto receipt = wire::parse_receipt(reply->body);
    if (!receipt) co_return refused(receipt.error(), std::nullopt);
    if (auto st = check_receipt(l, e, *receipt); !st) co_return finish("failed", st.error().to_string());
    if (auto st = spool_.complete(e, *receipt); !st) co_return finish("failed", st.error().to_string());
    co_return finish("stored");
  }

  // Waits for the intake's one answer to a run of records.
  static asio::awaitable<void> listen(Link* l, std::optional<Result<Answer>>* answer, asio::steady_timer* answered) {
    auto f = co_await l->channel.read(wire::kMaxControlBody);
    if (f)
      *answer = Answer{f->type, Bytes(f->body.begin(), f->body.end())};
    else
      *answer = fail(std::move(f).error());
    answered->cancel();
  }

  Spool& spool_;
  const IntakeTarget& target_;
  const UploadEvents& events_;
  std::string device_fingerprint_;
};

}  // namespace

PassReport ship_pass(Spool& spool, const IntakeTarget& target, const UploadEvents& on_upload) {
  PassReport report;
  auto key = crypto::load_secret_key_file(target.tls.key);
  if (!key || !key->signing) {
    report.ok = false;
    report.error = key ? target.tls.key + " is not a device key" : key.error().to_string();
    return report;
  }
  auto ctx = transport::make_client_context(target.tls);
  if (!ctx) {
    report.ok = false;
    report.error = ctx.error().to_string();
    return report;
  }
  asio::io_context io;
  Shipper shipper(spool, target, on_upload, key->signing->public_key().fingerprint());
  asio::co_spawn(io, shipper.pass(io, **ctx, report), asio::detached);
  io.run();
  return report;
}

}  // namespace mlfx::agent
