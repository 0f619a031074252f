// A lab on loopback for the intake tests: a CA, an intake (`mlfx serve` as a real process),
// devices with certificates and sealed bundles, and `mlfx-agent` runs against it. Real TLS,
// real processes, real files.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace mlfx::testing {

inline std::string agent_bin() {
  const char* dir = std::getenv("MLFX_BIN");
  return std::string(dir ? dir : ".") + "/../agent/mlfx-agent";
}

// A TCP port free right now on loopback (the kernel's pick).
inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// A shell command run in the background, in its own process group.
class Background {
 public:
  explicit Background(const std::string& command) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  Background(const Background&) = delete;
  ~Background() { kill(SIGKILL); }
  pid_t pid() const { return pid_; }
  bool running() {
    if (pid_ <= 0) return false;
    int status;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      pid_ = -1;
      return false;
    }
    return true;
  }
  // Exit code, waiting at most `timeout`; -1 when it is still running (then it is killed).
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (running() && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (running()) {
      kill(SIGKILL);
      return -1;
    }
    return exit_code_;
  }
  void kill(int sig) {
    if (pid_ <= 0) return;
    ::kill(-pid_, sig);
    ::kill(pid_, sig);
    if (sig == SIGKILL) {
      int status;
      waitpid(pid_, &status, 0);
      exit_code_ = 128 + SIGKILL;
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
};

struct Device {
  std::string id, key, pub, cert;
};

class IntakeLab {
 public:
  IntakeLab() {
    must(mlfx("keys gen --kind lab --out " + dir_ / "lab"));
    must(mlfx("keys gen --kind device --out " + dir_ / "intake"));
    must(mlfx("ca init --out " + dir_ / "ca"));
    must(mlfx("ca issue --ca " + dir_ / "ca" + " --server --key " + dir_ / "intake.pub" +
              " --name 127.0.0.1,localhost --out " + dir_ / "intake.pem"));
    port_ = free_port();
  }
  ~IntakeLab() { stop_server(SIGKILL); }

  const TempDir& dir() const { return dir_; }
  std::string store() const { return dir_ / "store"; }
  std::string ca_dir() const { return dir_ / "ca"; }
  int port() const { return port_; }
  std::string log_path() const { return dir_ / "serve.log"; }

  static CommandResult mlfx(const std::string& args) { return run(mlfx_bin() + " " + args); }
  static CommandResult agent(const std::string& args) { return run(agent_bin() + " " + args); }
  static void must(const CommandResult& r) { ASSERT_EQ(r.exit_code, 0) << r.output; }

  Device add_device(const std::string& id, const std::string& issue_args = "") {
    Device d{id, dir_ / (id + ".key"), dir_ / (id + ".pub"), dir_ / (id + ".pem")};
    must(mlfx("keys gen --kind device --out " + dir_ / id));
    must(mlfx("ca issue --ca " + ca_dir() + " --device " + d.pub + " --id " + id + " " + issue_args +
              " --out " + d.cert));
    fs::create_directories(trusted());
    fs::copy_file(d.pub, trusted() + "/" + id + ".pub", fs::copy_options::overwrite_existing);
    return d;
  }
  // A trust store of every device added: <id>.pub, for `bundle verify --trusted-devices`.
  std::string trusted() const { return dir_ / "trusted"; }

  // A bundle sealed by `d` of `bytes` random bytes cut into `chunk`-byte chunks.
  std::string seal(const Device& d, size_t bytes, uint32_t chunk, uint64_t seed) {
    const std::string data = dir_ / ("data-" + std::to_string(seed));
    const std::string out = dir_ / (d.id + "-" + std::to_string(seed) + ".mlfx");
    write_file(data, random_string(bytes, seed));
    must(mlfx("bundle seal " + data + " --out " + out + " --device-key " + d.key + " --recipient " +
              dir_ / "lab.pub" + " --device-id " + d.id + " --chunk-size " + std::to_string(chunk) + " -q"));
    fs::remove(data);
    return out;
  }

  // `prefix` runs the server under another command, e.g. "prlimit --as=N --".
  void start_server(const std::string& extra = "", const std::string& prefix = "") {
    stop_server(SIGKILL);
    const std::string port_file = dir_ / "port";
    fs::remove(port_file);
    server_ = std::make_unique<Background>(
        prefix + " " + mlfx_bin() + " serve --listen 127.0.0.1:" + std::to_string(port_) + " --store " + store() +
        " --ca-dir " + ca_dir() + " --cert " + dir_ / "intake.pem" + " --key " + dir_ / "intake.key" +
        " --port-file " + port_file + " " + extra + " 2>>" + log_path());
    for (int i = 0; i < 500 && !fs::exists(port_file); ++i) {
      ASSERT_TRUE(server_->running()) << "mlfx serve exited: " << read_file(log_path());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(fs::exists(port_file)) << read_file(log_path());
  }
  // The server's exit code (128 + signal when a signal ended it), -1 when none was running.
  int stop_server(int sig = SIGTERM) {
    if (!server_) return -1;
    server_->kill(sig);
    const int code = sig == SIGKILL ? 128 + SIGKILL : server_->wait(std::chrono::seconds(10));
    server_.reset();
    return code;
  }
  bool server_running() { return server_ && server_->running(); }
  pid_t server_pid() const { return server_ ? server_->pid() : -1; }

  std::string spool(const Device& d) const { return dir_ / ("spool-" + d.id); }
  void queue(const Device& d, const std::string& bundle) {
    must(agent("spool add --spool " + spool(d) + " " + bundle));
  }
  // mlfx-agent ship for device `d` (as `as` when another device's spool is shipped).
  std::string ship_command(const Device& d, const std::string& extra) const {
    return agent_bin() + " ship --spool " + spool(d) + " --server 127.0.0.1:" + std::to_string(port_) +
           " --ca " + ca_dir() + "/ca.pem --cert " + d.cert + " --key " + d.key + " --json " + extra;
  }
  CommandResult ship(const Device& d, const std::string& extra = "--once") { return run(ship_command(d, extra)); }

  // The JSON lines of the server log with "event" == `event`.
  std::vector<nlohmann::json> events(const std::string& event) const {
    std::vector<nlohmann::json> out;
    std::istringstream in(read_file(log_path()));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.value("event", "") == event) out.push_back(j);
    }
    return out;
  }
  // The ship command's JSON lines (one per upload attempt).
  static std::vector<nlohmann::json> outcomes(const std::string& output) {
    std::vector<nlohmann::json> out;
    std::istringstream in(output);
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.is_object() && j.contains("result")) out.push_back(j);
    }
    return out;
  }

  // Stored objects: <sha>.mlfx and their sidecars.
  std::vector<std::string> objects() const { return list_dir(store() + "/objects"); }
  // The bundle digest (bundle-format.md §18) that names a bundle in spools and the store.
  static std::string digest_of(const std::string& path) {
    auto r = mlfx("bundle info --json " + path);
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    return j.is_object() ? j.value("bundle_digest", "") : "";
  }
  std::string object_path(const std::string& bundle) const {
    return store() + "/objects/" + digest_of(bundle) + ".mlfx";
  }
  nlohmann::json status(const Device& d) const {
    auto r = agent("status --spool " + spool(d) + " --json");
    return nlohmann::json::parse(r.output, nullptr, false);
  }

 private:
  TempDir dir_;
  int port_ = 0;
  std::unique_ptr<Background> server_;
};

}  // namespace mlfx::testing
