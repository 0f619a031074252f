#include "intake/intake_server.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <mutex>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "intake/admission.h"
#include "intake/intake_session.h"
#include "mlfx/base/clock.h"
#include "mlfx/transport/deadline.h"
#include "mlfx/transport/frame_channel.h"

namespace mlfx::intake {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using transport::TlsContext;
using transport::TlsStream;

namespace {

struct CrlStamp {
  ino_t ino = 0;
  off_t size = -1;
  timespec mtime{};
  bool operator==(const CrlStamp& o) const {
    return ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec;
  }
};

CrlStamp stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {st.st_ino, st.st_size, st.st_mtim};
}

}  // namespace

// Time to deliver a last ERROR before the socket closes.
constexpr std::chrono::milliseconds kGrace{2000};
// After a failed accept (out of descriptors): a pause, not a busy loop.
constexpr std::chrono::milliseconds kAcceptRetry{100};

// An io_context and its thread; busy_since (steady clock ticks, 0: not busy) marks a session
// step in progress, which may block the thread (hashing, fsync).
struct Context {
  asio::io_context io{1};
  std::atomic<int64_t> busy_since{0};
};
// A context busy this long in one step takes no new connection while another one is free.
constexpr std::chrono::milliseconds kBusyContext{250};

// One connection before it authenticated, as its context sees it: an eviction posted from the
// accept loop acts only while the handshake is still under way.
struct Pending {
  bool done = false, evicted = false;
  std::weak_ptr<transport::Deadline> deadline;
};

std::chrono::milliseconds until(Clock::time_point t) {
  return std::max(std::chrono::milliseconds(0), std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()));
}

// Many connections each hold a descriptor: take what the hard limit allows.
void raise_descriptor_limit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &r);
  }
}

struct IntakeServer::Impl {
  Impl(ServerOptions o, EvidenceStore& s, EventLog l)
      : opt(std::move(o)),
        store(s),
        log(std::move(l)),
        handshakes(opt.max_handshakes, opt.max_handshakes_per_address),
        slots(opt.max_connections, opt.max_sessions_per_device),
        budget(opt.upload_memory, opt.upload_memory / 4),
        contexts(make_contexts(opt.threads)),
        acceptor(io()) {}

  // Declared before `io`, so destroyed after it: destroying the io_context destroys the
  // coroutine frames of sessions still open at shutdown, and they give back their slots and
  // memory on the way out.
  ServerOptions opt;
  EvidenceStore& store;
  EventLog log;
  PendingHandshakes handshakes;
  SessionSlots slots;
  MemoryBudget budget;
  std::mutex ctx_mu;
  TlsContext ctx;
  CrlStamp crl_stamp;
  // One io_context per thread, each run by its own thread: a connection stays on the context
  // it was accepted to, so its handlers never hand over to (and wake) another thread. With one
  // context shared by the threads, every event of a busy socket woke the idle thread (a sixth
  // of the intake's CPU in a bulk upload). contexts[0] also accepts and expires uploads.
  std::vector<std::unique_ptr<Context>> contexts;
  size_t next_context = 0;  // round robin, touched by the accept loop only
  tcp::acceptor acceptor;

  static std::vector<std::unique_ptr<Context>> make_contexts(unsigned threads) {
    const unsigned n = threads ? threads : std::max(2u, std::thread::hardware_concurrency());
    std::vector<std::unique_ptr<Context>> all;
    for (unsigned i = 0; i < n; ++i) all.push_back(std::make_unique<Context>());
    return all;
  }
  asio::io_context& io() { return contexts[0]->io; }
  // The next context in turn that is not stuck in a long session step (a resumed upload
  // re-hashed after a restart, a commit's fsyncs): a new connection waits for its handshake
  // on a thread that answers.
  Context& pick_context() {
    const auto now = Clock::now().time_since_epoch().count();
    for (size_t tried = 0; tried < contexts.size(); ++tried) {
      Context& c = *contexts[next_context++ % contexts.size()];
      const int64_t since = c.busy_since.load(std::memory_order_relaxed);
      if (since == 0 || now - since < std::chrono::nanoseconds(kBusyContext).count()) return c;
    }
    return *contexts[next_context++ % contexts.size()];
  }

  // The TLS context for a new connection: rebuilt when the CRL file changed, so a revocation
  // holds from the next handshake on, without a restart. A CRL that cannot be read keeps the
  // previous context (and says so).
  TlsContext current_context() {
    std::lock_guard lock(ctx_mu);
    if (opt.tls.crl.empty()) return ctx;
    CrlStamp now = stamp(opt.tls.crl);
    if (now == crl_stamp) return ctx;
    auto fresh = transport::make_server_context(opt.tls);
    if (!fresh) {
      log({{"event", "crl_reload_failed"}, {"error", fresh.error().to_string()}});
    } else {
      ctx = *fresh;
      log({{"event", "crl_reloaded"}, {"crl", opt.tls.crl}});
    }
    crl_stamp = now;
    return ctx;
  }

  asio::awaitable<void> accept_loop() {
    for (;;) {
      boost::system::error_code ec;
      Context& home = pick_context();
      tcp::socket socket = co_await acceptor.async_accept(home.io, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        log({{"event", "accept_failed"}, {"error", ec.message()}});
        asio::steady_timer pause(io(), kAcceptRetry);
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      auto ex = socket.get_executor();
      asio::co_spawn(ex, serve(std::move(socket), home), asio::detached);
    }
  }

  // The handshake of one connection, under the handshake deadline and holding a slot of the
  // pending table (which a newer connection may take: then this one is closed).
  asio::awaitable<void> serve(tcp::socket socket, Context& home) {
    const auto accepted = Clock::now();
    boost::system::error_code ec;
    auto endpoint = socket.remote_endpoint(ec);
    const std::string address = ec ? "unknown" : endpoint.address().to_string();
    const std::string peer = ec ? "unknown" : address + ":" + std::to_string(endpoint.port());
    TlsContext tls = current_context();
    TlsStream stream(std::move(socket), *tls);
    auto deadline = transport::Deadline::start(stream, opt.handshake_timeout);
    auto pending = std::make_shared<Pending>();
    pending->deadline = deadline;
    const uint64_t ticket = handshakes.admit(address, [ex = stream.get_executor(), pending] {
      asio::post(ex, [pending] {
        if (pending->done) return;
        pending->evicted = true;
        if (auto d = pending->deadline.lock()) d->expire_in(std::chrono::milliseconds(0));
      });
    });
    ec = co_await stream.handshake(asio::ssl::stream_base::server);
    pending->done = true;
    handshakes.leave(address, ticket);
    if (ec) {
      const std::string reason = pending->evicted    ? "evicted: newer connections needed the handshake slot"
                                 : deadline->expired() ? "handshake timeout"
                                                       : transport::describe(ec, &stream);
      log({{"event", "handshake_failed"}, {"peer", peer}, {"reason", reason}});
    } else {
      co_await session(stream, *deadline, peer, accepted + opt.handshake_timeout, home);
    }
    deadline->stop();
    stream.lowest_layer().close(ec);
  }

  // An authenticated connection: a session slot (in all and for its device), then frames.
  asio::awaitable<void> session(TlsStream& stream, transport::Deadline& deadline, const std::string& peer,
                                Clock::time_point hello_by, Context& home) {
    auto identity = transport::peer_identity(stream);
    if (!identity) {
      log({{"event", "refused"}, {"peer", peer}, {"reason", identity.error().to_string()}});
      co_return;
    }
    Uploader who{identity->id, identity->key_fingerprint, identity->serial, peer};
    transport::FrameChannel channel(stream);
    if (const std::string full = slots.take(who.key_fingerprint); !full.empty()) {
      log({{"event", "refused"}, {"peer", peer}, {"device_id", who.device_id}, {"reason", full},
           {"limit", full == "connection limit" ? opt.max_connections : opt.max_sessions_per_device}});
      const std::string why = full == "connection limit"
                                  ? "this intake serves " + std::to_string(opt.max_connections) +
                                        " sessions at once (--max-connections); retry later"
                                  : "this device already has " + std::to_string(opt.max_sessions_per_device) +
                                        " sessions open (--max-sessions-per-device); retry later";
      deadline.expire_in(kGrace);
      co_await channel.send_error(wire::WireError::kBusy, why);
      co_await linger(stream, deadline);
      co_return;
    }
    struct GiveBack {
      SessionSlots& slots;
      const std::string& device;
      ~GiveBack() { slots.give_back(device); }
    } give_back{slots, who.key_fingerprint};
    log({{"event", "connected"}, {"peer", peer}, {"device_id", who.device_id},
         {"device_key_fingerprint", who.key_fingerprint}});
    IntakeSession session(store, who, opt.max_record, &budget, opt.requests);
    std::string end = "closed by the device";
    for (;;) {
      // HELLO is due by the handshake deadline; each later frame within the idle limit.
      deadline.expire_in(session.established() ? opt.idle_timeout : std::min(opt.idle_timeout, until(hello_by)));
      auto frame = co_await channel.read(session.max_record());
      if (!frame) {
        if (deadline.expired()) {
          deadline.expire_in(kGrace);
          const std::string why = session.established() ? "no frame within the idle limit"
                                                        : "no HELLO within the handshake limit";  // a named local: see frame_channel.cc
          co_await channel.send_error(wire::WireError::kIdleTimeout, why);
          end = "idle timeout";
        } else {
          end = frame.error().to_string();
          // A header over its limits: the channel has sent the ERROR; let it arrive.
          if (frame.error().code() == Errc::kBadFormat) co_await linger(stream, deadline);
        }
        break;
      }
      home.busy_since.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      SessionReply reply = session.handle(frame->type, frame->body, &channel.buffer());
      home.busy_since.store(0, std::memory_order_relaxed);
      for (json::Json& event : session.take_events()) {
        event["peer"] = peer;
        log(event);
      }
      bool sent = true;
      for (const Bytes& f : reply.frames) {
        deadline.expire_in(opt.idle_timeout);
        if (auto st = co_await channel.write_encoded(f); !st) {
          end = st.error().to_string();
          sent = false;
          break;
        }
      }
      if (!sent) break;
      if (reply.close) {
        end = "refused";
        co_await linger(stream, deadline);
        break;
      }
    }
    for (const UploadLog& u : session.uploads())
      log({{"event", "upload"}, {"peer", peer}, {"device_id", who.device_id},
           {"device_key_fingerprint", who.key_fingerprint}, {"bundle_id", u.bundle_id},
           {"bundle_digest", u.bundle_digest}, {"file_size", u.file_size},
           {"received_bytes", u.received_bytes}, {"result", u.result}, {"commit_ms", u.commit_ms}});
    log({{"event", "disconnected"}, {"peer", peer}, {"device_id", who.device_id}, {"end", end},
         {"bytes_in", channel.bytes_read()}, {"bytes_out", channel.bytes_written()}});
  }

  // Unfinished uploads untouched for the store's partial_ttl go, a few times per that time.
  asio::awaitable<void> expire_loop() {
    const auto ttl = std::chrono::duration_cast<std::chrono::milliseconds>(store.limits().partial_ttl);
    const auto period = std::clamp(ttl / 4, std::chrono::milliseconds(100), std::chrono::milliseconds(60000));
    asio::steady_timer timer(io());
    for (;;) {
      boost::system::error_code ec;
      timer.expires_after(period);
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !acceptor.is_open()) co_return;
      for (json::Json& note : store.expire_partials()) {
        note["event"] = "partial_expired";
        log(note);
      }
    }
  }

  // After an ERROR: stop sending, and read (and drop) what the device still sends for a
  // moment, so that its TCP stack delivers our ERROR instead of a reset.
  asio::awaitable<void> linger(TlsStream& stream, transport::Deadline& deadline) {
    boost::system::error_code ec;
    tcp::socket& sock = stream.next_layer();
    sock.shutdown(tcp::socket::shutdown_send, ec);
    deadline.expire_in(kGrace);
    std::vector<uint8_t> sink(16384);
    while (!ec) co_await sock.async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
  }
};

IntakeServer::IntakeServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IntakeServer::~IntakeServer() = default;

Result<std::unique_ptr<IntakeServer>> IntakeServer::create(ServerOptions options, EvidenceStore& store, EventLog log) {
  raise_descriptor_limit();
  auto impl = std::make_unique<Impl>(std::move(options), store, std::move(log));
  MLFX_ASSIGN(impl->ctx, transport::make_server_context(impl->opt.tls));
  if (!impl->opt.tls.crl.empty()) impl->crl_stamp = stamp(impl->opt.tls.crl);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(impl->opt.host, ec);
  if (ec) return fail(Errc::kInvalidArgument, "'" + impl->opt.host + "' is not an IP address to listen on");
  tcp::endpoint endpoint(address, impl->opt.port);
  const std::string where = impl->opt.host + ":" + std::to_string(impl->opt.port);
  auto& a = impl->acceptor;
  if (a.open(endpoint.protocol(), ec); !ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail(Errc::kIo, "cannot listen on " + where + ": " + ec.message());
  return std::unique_ptr<IntakeServer>(new IntakeServer(std::move(impl)));
}

uint16_t IntakeServer::port() const {
  boost::system::error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

void IntakeServer::run() {
  asio::co_spawn(impl_->io(), impl_->accept_loop(), asio::detached);
  asio::co_spawn(impl_->io(), impl_->expire_loop(), asio::detached);
  std::vector<std::thread> pool;
  for (size_t i = 1; i < impl_->contexts.size(); ++i)
    pool.emplace_back([ctx = &impl_->contexts[i]->io] {
      auto busy = asio::make_work_guard(*ctx);  // idle until a connection comes its way
      ctx->run();
    });
  impl_->io().run();
  for (auto& t : pool) t.join();
}

void IntakeServer::stop() {
  asio::post(impl_->io(), [this] {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
  });
  for (auto& c : impl_->contexts) c->io.stop();
}

}  // namespace mlfx::intake
