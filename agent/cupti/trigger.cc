#include "cupti/trigger.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace mlfx::cupti {
namespace {

struct ThreadArgs {
  int fd;
  std::function<void()> on_trigger;
};

void* trigger_loop(void* p) {
  auto* args = static_cast<ThreadArgs*>(p);
  char buf[64];
  for (;;) {
    const ssize_t n = ::read(args->fd, buf, sizeof buf);  // several bytes at once: one copy-out
    if (n > 0) {
      args->on_trigger();
    } else if (n < 0 && errno != EINTR) {
      break;  // the descriptor is gone: nothing more will trigger
    }
  }
  delete args;
  return nullptr;
}

}  // namespace

int open_trigger_fifo(const std::string& path, std::string* error) {
  if (::mkfifo(path.c_str(), 0600) != 0 && errno != EEXIST) {
    *error = "mkfifo " + path + ": " + std::strerror(errno);
    return -1;
  }
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    *error = "open " + path + ": " + std::strerror(errno);
    return -1;
  }
  struct stat st {};
  // Someone else's file at the path (planted or stale) is not our trigger.
  if (::fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_uid != ::geteuid() ||
      (st.st_mode & 077) != 0) {
    *error = path + " exists and is not a FIFO of this user with mode 0600";
    ::close(fd);
    return -1;
  }
  return fd;
}

bool start_trigger_thread(int fd, std::function<void()> on_trigger, std::string* error) {
  auto* args = new ThreadArgs{fd, std::move(on_trigger)};
  sigset_t all, old;
  sigfillset(&all);
  // The new thread inherits this mask: signals meant for the application never land on it.
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t thread;
  const int rc = ::pthread_create(&thread, nullptr, trigger_loop, args);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0) {
    delete args;
    *error = std::string("pthread_create: ") + std::strerror(rc);
    return false;
  }
  pthread_setname_np(thread, "mlfx-cupti");  // what `top -H` and gdb show for it
  ::pthread_detach(thread);
  return true;
}

}  // namespace mlfx::cupti
