#include "mlfx/base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace mlfx {

namespace {

constexpr size_t kMaxErr = 64 << 10;

struct Pipe {
  int fd[2] = {-1, -1};
  ~Pipe() {
    for (int f : fd)
      if (f >= 0) close(f);
  }
};

}  // namespace

Result<ProcessResult> run_process(const std::vector<std::string>& argv, const std::string& input,
                                  const ProcessOptions& options) {
  if (argv.empty()) return fail(Errc::kInvalidArgument, "run_process: no program");
  Pipe in, out, err;
  if (pipe2(in.fd, O_CLOEXEC) != 0 || pipe2(out.fd, O_CLOEXEC) != 0 || pipe2(err.fd, O_CLOEXEC) != 0)
    return fail(Errc::kIo, "cannot create pipes: " + std::string(strerror(errno)));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in.fd[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out.fd[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err.fd[1], 2);
  if (!options.cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, options.cwd.c_str());
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  if (options.env) {
    for (const auto& e : *options.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), options.env ? envp.data() : environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return fail(Errc::kIo, "cannot run " + argv[0] + ": " + strerror(rc));
  for (int* f : {&in.fd[0], &out.fd[1], &err.fd[1]}) {
    close(*f);
    *f = -1;
  }
  ProcessResult r;
  size_t written = 0;
  if (input.empty()) {
    close(in.fd[1]);
    in.fd[1] = -1;
  } else {
    fcntl(in.fd[1], F_SETFL, O_NONBLOCK);
  }
  // One loop feeds standard input and drains both outputs, so that no pipe fills and blocks.
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  while (out.fd[0] >= 0 || err.fd[0] >= 0) {
    pollfd fds[3];
    int n = 0;
    if (out.fd[0] >= 0) fds[n++] = {out.fd[0], POLLIN, 0};
    if (err.fd[0] >= 0) fds[n++] = {err.fd[0], POLLIN, 0};
    if (in.fd[1] >= 0) fds[n++] = {in.fd[1], POLLOUT, 0};
    if (poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (!fds[i].revents) continue;
      if (fds[i].fd == in.fd[1]) {
        ssize_t w = write(in.fd[1], input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if (w < 0 && errno != EAGAIN && errno != EINTR) written = input.size();  // reader gone
        if (written == input.size()) {
          close(in.fd[1]);
          in.fd[1] = -1;
        }
        continue;
      }
      char buf[65536];
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got <= 0) {
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        int& f = fds[i].fd == out.fd[0] ? out.fd[0] : err.fd[0];
        close(f);
        f = -1;
        continue;
      }
      if (fds[i].fd == out.fd[0]) {
        r.out.append(buf, static_cast<size_t>(got));
      } else {
        r.err.append(buf, static_cast<size_t>(got));
        if (r.err.size() > kMaxErr) r.err.erase(0, r.err.size() - kMaxErr);
      }
    }
  }
  if (in.fd[1] >= 0) {
    close(in.fd[1]);
    in.fd[1] = -1;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  // Drop a SIGPIPE raised by our writes while it was blocked, then restore the mask.
  timespec zero{};
  while (sigtimedwait(&block, nullptr, &zero) > 0) {
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

Result<int> run_with_descriptors(const std::vector<std::string>& argv, const std::vector<DescriptorMap>& fds) {
  if (argv.empty()) return fail(Errc::kInvalidArgument, "run_with_descriptors: no program");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  for (const auto& m : fds) posix_spawn_file_actions_adddup2(&actions, m.parent_fd, m.child_fd);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return fail(Errc::kIo, "cannot run " + argv[0] + ": " + strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

Result<std::string> find_companion_program(const std::string& name) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return fail(Errc::kNotFound, "cannot find this program's own path (/proc/self/exe)");
  std::string dir(self, static_cast<size_t>(n));
  dir.erase(dir.find_last_of('/'));
  std::vector<std::string> tried;
  for (const char* sub : {"/", "/../libexec/mlfx/", "/../agent/", "/../analyzer/"}) {
    std::string candidate = dir + sub + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    tried.push_back(candidate);
  }
  std::string where;
  for (const auto& t : tried) where += (where.empty() ? "" : ", ") + t;
  return fail(Errc::kNotFound, name + " is not installed (looked for " + where + ")");
}


}  // namespace mlfx
