#include "capture/physical/lime_source.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <thread>

#include "capture/physical/lime_format.h"
#include "capture/process/procfs.h"

namespace mlfx::agent::physical {

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kReadBlock = 1u << 20;
constexpr int kPipeBytes = 1 << 20;  // the default pipe-max-size: fewer wake-ups than 64 KiB

// A directory only root can enter, for the FIFOs; removed with what is in it.
class PrivateDir {
 public:
  static Result<PrivateDir> create() {
    std::string tried;
    for (const char* parent : {"/run", "/dev/shm", "/tmp"}) {
      std::string templ = std::string(parent) + "/mlfx-lime.XXXXXX";
      if (::mkdtemp(templ.data())) return PrivateDir(templ);  // mode 0700
      tried += std::string(tried.empty() ? "" : ", ") + parent + " (" + process::errno_name(errno) + ")";
    }
    return fail(Errc::kIo, "no writable directory for LiME's FIFO: tried " + tried);
  }
  PrivateDir(PrivateDir&& o) noexcept : path_(std::move(o.path_)), names_(std::move(o.names_)) { o.path_.clear(); }
  PrivateDir(const PrivateDir&) = delete;
  ~PrivateDir() {
    if (path_.empty()) return;
    for (const std::string& n : names_) ::unlink((path_ + "/" + n).c_str());
    ::rmdir(path_.c_str());
  }
  Result<std::string> make_fifo(const std::string& name) {
    const std::string p = path_ + "/" + name;
    if (::mkfifo(p.c_str(), 0600) != 0) return fail(Errc::kIo, "mkfifo " + p + ": " + process::errno_name(errno));
    names_.push_back(name);
    return p;
  }

 private:
  explicit PrivateDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
  std::vector<std::string> names_;
};

// The read end of a FIFO, non-blocking: open succeeds before LiME opens its end, and poll
// reports a hang-up only once a writer has come and gone.
Result<File> open_fifo_reader(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return fail(Errc::kIo, "opening FIFO " + path + ": " + process::errno_name(errno));
  return File(fd, path);
}

// finit_module on a thread of its own: LiME's init is the whole dump and returns only when it
// is done. The thread blocks every signal (LiME's write to a closed FIFO raises SIGPIPE in the
// loading thread). It signals its end on an eventfd; its state is shared, so an init that never
// returns cannot outlive what it uses.
class LoaderThread {
 public:
  static Result<std::unique_ptr<LoaderThread>> start(const ModuleFile& m, std::string params, std::string advice) {
    auto state = std::make_shared<State>();
    state->event = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (state->event < 0) return fail(Errc::kIo, "eventfd: " + process::errno_name(errno));
    const int fd = ::fcntl(m.file.fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return fail(Errc::kIo, "dup: " + process::errno_name(errno));
    state->module.file = File(fd, m.path);
    state->module.path = m.path;
    state->module.name = m.name;
    state->module.vermagic = m.vermagic;
    state->module.size = m.size;
    std::unique_ptr<LoaderThread> t(new LoaderThread(state));
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  // the new thread starts with every signal blocked
    t->thread_ = std::thread([state, params = std::move(params), advice = std::move(advice)] {
      state->result = load_module(state->module, params, advice);
      state->done = true;
      const uint64_t one = 1;
      (void)!::write(state->event, &one, sizeof one);
    });
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return t;
  }
  ~LoaderThread() {
    if (!thread_.joinable()) return;
    if (state_->done) thread_.join();
    else thread_.detach();  // an init that never returned: the state stays with the thread
  }
  int event_fd() const { return state_->event; }
  bool done() const { return state_->done; }
  // Waits up to `limit` for the init to return; true when it has (the thread is joined).
  bool wait(std::chrono::milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    while (!state_->done && Clock::now() < deadline) {
      pollfd p{state_->event, POLLIN, 0};
      (void)::poll(&p, 1, 100);
    }
    if (state_->done && thread_.joinable()) thread_.join();
    return state_->done;
  }
  // After wait(): the load's outcome.
  const Status& result() const { return state_->result; }

 private:
  struct State {
    ModuleFile module;
    Status result;
    std::atomic<bool> done{false};
    int event = -1;
    ~State() {
      if (event >= 0) ::close(event);
    }
  };
  explicit LoaderThread(std::shared_ptr<State> s) : state_(std::move(s)) {}
  std::shared_ptr<State> state_;
  std::thread thread_;
};

// What LiME sent, checked and hashed as it arrives, into the bundle's chunk buffers.
struct Received {
  LimeStreamChecker checker;
  bool eof = false;
};

// Reads what the FIFO holds now (until it would block, or its end). An error stops the capture.
Status drain(File& fifo, bundle::BundleWriter& w, Received& r, Progress* progress) {
  while (!r.eof) {
    MLFX_ASSIGN(std::span<uint8_t> room, w.buffer(kReadBlock));
    const ssize_t n = ::read(fifo.fd(), room.data(), room.size());
    if (n < 0) {
      const int err = errno;
      MLFX_TRY(w.commit(0));
      if (err == EINTR) continue;
      if (err == EAGAIN) return {};
      return fail(Errc::kIo, "reading LiME's output from " + fifo.path() + ": " + process::errno_name(err));
    }
    if (n == 0) {
      MLFX_TRY(w.commit(0));
      r.eof = true;
      return {};
    }
    const ByteView got(room.data(), static_cast<size_t>(n));
    MLFX_TRY(r.checker.feed(got));
    MLFX_TRY(w.commit(got.size()));
    if (progress) progress->advance(got.size());
  }
  return {};
}

// After an error: LiME must finish its init so that it can be unloaded. With no reader its
// writes fail at once (EPIPE); opening and closing the FIFO releases an open that waits for a
// reader. Its digest FIFO stays open for reading until then, so that open cannot wait.
void make_lime_finish(File& image, const std::string& image_path, LoaderThread& loader) {
  (void)image.close();
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (!loader.wait(std::chrono::milliseconds(200)) && Clock::now() < deadline) {
    const int fd = ::open(image_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
  }
}

std::string read_digest(File& fifo) {
  char buf[256];
  std::string text;
  while (true) {
    const ssize_t n = ::read(fifo.fd(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || text.size() > 1024) break;
    text.append(buf, static_cast<size_t>(n));
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0' || text.back() == ' ')) text.pop_back();
  return text;
}

// The deepest System RAM entry of the tree holding `address`.
const IomemEntry* ram_entry_at(const std::vector<IomemEntry>& tree, uint64_t address) {
  const IomemEntry* best = nullptr;
  for (const IomemEntry& e : tree)
    if (is_system_ram(e) && e.start <= address && address <= e.end && (!best || e.depth >= best->depth)) best = &e;
  return best;
}

}  // namespace

Result<std::unique_ptr<LimeSource>> LimeSource::create(PhysicalOptions options) {
  std::unique_ptr<LimeSource> s(new LimeSource(std::move(options)));
  MLFX_TRY(s->prepare(kLimeModuleFile, "LiME"));
  return s;
}

std::string LimeSource::method() const {
  return "stock LiME (" + module_.name + ") loaded with finit_module, format=lime digest=sha256 timeout=0, "
         "its output read from a private FIFO into the sealer (no file), checked as it streamed, its digest compared "
         "with the sealed stream's";
}

Status LimeSource::read_image(bundle::BundleWriter& w, Progress* progress) {
  MLFX_ASSIGN(PrivateDir dir, PrivateDir::create());
  MLFX_ASSIGN(std::string image_path, dir.make_fifo("image"));
  // LiME writes its digest to PATH.<digest>: a FIFO too, so nothing lands in a file.
  MLFX_ASSIGN(std::string digest_path, dir.make_fifo("image.sha256"));
  MLFX_ASSIGN(File image, open_fifo_reader(image_path));
  MLFX_ASSIGN(File digest, open_fifo_reader(digest_path));
  (void)::fcntl(image.fd(), F_SETPIPE_SZ, kPipeBytes);  // best effort

  parameters_ = "path=" + image_path + " format=lime digest=sha256 dio=0 timeout=0";
  MLFX_ASSIGN(std::unique_ptr<LoaderThread> loader,
              LoaderThread::start(module_, parameters_,
                                  "LiME stays loaded after a dump (its exit function does nothing): if no capture "
                                  "is running, remove it with 'rmmod " + module_.name + "' and try again"));

  Received r;
  Status streamed;
  while (streamed) {
    if (cancelled()) {
      streamed = fail(Errc::kIo, "interrupted");
      break;
    }
    pollfd fds[2] = {{image.fd(), POLLIN, 0}, {loader->event_fd(), POLLIN, 0}};
    const int ready = ::poll(r.eof ? fds + 1 : fds, r.eof ? 1 : 2, 250);
    if (ready < 0 && errno != EINTR) {
      streamed = fail(Errc::kIo, "poll: " + process::errno_name(errno));
      break;
    }
    // Only when poll says so: before LiME opens its end, a read would return 0 as if it had ended.
    if (!r.eof && ready > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) streamed = drain(image, w, r, progress);
    if (streamed && loader->done()) {
      // LiME closed its end before its init returned: what is left in the FIFO ends the image.
      streamed = drain(image, w, r, progress);
      if (streamed && !r.eof) streamed = fail(Errc::kIo, "LiME returned but its output did not end");
      break;
    }
  }
  if (!streamed) {
    make_lime_finish(image, image_path, *loader);
    loaded_ = loader->done() && loader->result().has_value();
    if (!loader->done())
      return fail(std::move(streamed).error().context("LiME's init did not return; it stays loaded (rmmod " +
                                                      module_.name + " after it ends)"));
    return fail(std::move(streamed).error().context("reading LiME's output"));
  }
  loader->wait(std::chrono::hours(1));  // done already
  if (!loader->result()) {
    // Its init failed: the kernel has removed it again (or it was someone else's: EEXIST).
    Error e = loader->result().error();
    if (r.checker.stream_bytes())
      return fail(std::move(e).context("LiME failed after " + std::to_string(r.checker.stream_bytes()) + " bytes"));
    return fail(std::move(e));
  }
  loaded_ = true;
  footprint_ = module_sysfs_facts(module_.name);
  MLFX_TRY(r.checker.finish());
  tool_sha256_ = read_digest(digest);  // compared with the sealed stream's SHA-256 (source_context)
  count_image(r.checker.stream_bytes(), r.checker.data_bytes(), r.checker.ranges().size());
  account_for_what_lime_left_out(r.checker.ranges());
  return {};
}

void LimeSource::account_for_what_lime_left_out(const std::vector<PhysRange>& written) {
  std::vector<PhysRange> covered;
  for (const PhysRange& x : written) {
    if (!covered.empty() && x.start == covered.back().end + 1) covered.back().end = x.end;
    else covered.push_back(x);
  }
  image_ranges_ = covered;
  unreadable_.clear();
  for (const PhysRange& gap : subtract(all_system_ram(iomem_), covered)) {
    const IomemEntry* e = ram_entry_at(iomem_, gap.start);
    std::string reason = e && e->depth > 0
                             ? "nested System RAM ('" + e->name + "' at depth " + std::to_string(e->depth) +
                                   "): LiME 1.9.1 reads only the top level of the iomem tree"
                             : "System RAM that LiME did not write";
    unreadable_.push_back({gap, std::move(reason)});
  }
  // A range ending inside a page: LiME writes zeros for that page's part instead of reading it.
  zero_filled_.clear();
  const uint64_t page = kernel_.page_size;
  for (const PhysRange& x : written) {
    const uint64_t tail = (x.end + 1) % page;
    if (tail == 0) continue;
    const uint64_t from = std::max(x.start, x.end + 1 - tail);
    zero_filled_.push_back({{from, x.end}, "the range ends inside a page: LiME writes zeros for that part of the "
                                           "page instead of reading it"});
  }
}

Status LimeSource::release_module() {
  if (!loaded_) return {};
  loaded_ = false;
  return unload_module(module_.name);
}

json::Json LimeSource::source_context() const {
  json::Json c = {{"module", {{"footprint", footprint_}}}};
  if (!image_sha256_.empty())
    c["digest"] = {{"sha256", image_sha256_},
                   {"tool_sha256", tool_sha256_.empty() ? json::Json(nullptr) : json::Json(tool_sha256_)},
                   {"match", digest_matches()}};
  return c;
}

}  // namespace mlfx::agent::physical
