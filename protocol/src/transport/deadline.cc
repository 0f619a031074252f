#include "mlfx/transport/deadline.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace mlfx::transport {

using Clock = std::chrono::steady_clock;

Deadline::Deadline(TlsStream& stream) : stream_(stream), timer_(stream.get_executor()) {}

std::shared_ptr<Deadline> Deadline::start(TlsStream& stream, std::chrono::milliseconds first) {
  std::shared_ptr<Deadline> d(new Deadline(stream));
  d->deadline_ = Clock::now() + first;
  asio::co_spawn(stream.get_executor(), d->watch(d), asio::detached);
  return d;
}

void Deadline::expire_in(std::chrono::milliseconds d) {
  const auto next = Clock::now() + d;
  const bool sooner = next < timer_.expiry();
  deadline_ = next;
  expired_ = false;
  if (sooner) timer_.cancel();  // the watcher re-arms at the new time; later ones it finds itself
}

void Deadline::stop() {
  stopped_ = true;
  timer_.cancel();
}

// The parameter, copied into the coroutine frame, keeps this object alive while it watches.
asio::awaitable<void> Deadline::watch(std::shared_ptr<Deadline>) {
  boost::system::error_code ec;
  while (!stopped_) {
    timer_.expires_at(deadline_);
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped_) break;
    if (Clock::now() < deadline_) continue;  // re-armed meanwhile
    expired_ = true;
    stream_.cancel();
    deadline_ = Clock::time_point::max();  // until re-armed
  }
}

}  // namespace mlfx::transport
