#include "intake/background_hash.h"

#include <unistd.h>

#include <cerrno>

#include "mlfx/base/bytes.h"
#include "mlfx/base/file.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::intake {

Result<std::unique_ptr<BackgroundHash>> BackgroundHash::start(int fd) {
  std::unique_ptr<BackgroundHash> h(new BackgroundHash(fd));
  h->thread_ = std::thread([p = h.get()] { p->run(); });
  return h;
}

BackgroundHash::~BackgroundHash() {
  {
    std::lock_guard lock(mu_);
    closing_ = true;
    ranges_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void BackgroundHash::add(uint64_t offset, uint64_t size) {
  {
    std::lock_guard lock(mu_);
    ranges_.emplace_back(offset, size);
  }
  cv_.notify_all();
}

void BackgroundHash::run() {
  auto hasher = crypto::Hasher::create(crypto::HashAlg::kSha256);
  Bytes buf(4u << 20);
  for (;;) {
    std::pair<uint64_t, uint64_t> range;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return closing_ || !ranges_.empty(); });
      if (ranges_.empty()) break;  // closing, all done
      range = ranges_.front();
      ranges_.pop_front();
    }
    if (!hasher || error_) continue;
    for (uint64_t done = 0; done < range.second;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), range.second - done));
      ssize_t got = ::pread(fd_, buf.data(), n, static_cast<off_t>(range.first + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        std::lock_guard lock(mu_);
        error_ = Error(Errc::kIo, "cannot read back the upload to hash it: " + errno_text(got < 0 ? errno : EIO));
        break;
      }
      hasher->update({buf.data(), static_cast<size_t>(got)});
      done += static_cast<uint64_t>(got);
    }
  }
  std::lock_guard lock(mu_);
  if (!hasher) {
    error_ = hasher.error();
  } else if (!error_) {
    auto d = hasher->finish();
    if (d) digest_ = to_hex(*d);
    else error_ = d.error();
  }
}

Result<std::string> BackgroundHash::finish() {
  {
    std::lock_guard lock(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (error_) return fail(*error_);
  return digest_;
}

}  // namespace mlfx::intake
