// A real python3 + torch victim process for the end-to-end tests (tests/victims/*.py): started
// through /bin/sh, its stderr kept in the ground-truth directory, killed at scope exit.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "test_util.h"

namespace mlfx::testing {

inline const std::string kPython = "/usr/bin/python3";  // Debian's, with python3-torch
inline const std::string kVictims = std::string(MLFX_SOURCE_DIR) + "/tests/victims";

inline std::string agent_bin() {
  const char* dir = std::getenv("MLFX_BIN");
  return std::string(dir ? dir : ".") + "/../agent/mlfx-agent";
}

inline bool torch_available() {
  static const bool ok = run(kPython + " -c 'import torch'").exit_code == 0;
  return ok;
}

inline bool wait_for(const std::string& path, int seconds) {
  for (int i = 0; i < seconds * 10; ++i) {
    if (fs::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// A victim process of one scenario of tests/victims/torch_victim.py (or any command line).
class Victim {
 public:
  Victim(const std::string& command, const std::string& gt_dir) : gt_(gt_dir) {
    fs::create_directories(gt_);
    pid_ = fork();
    if (pid_ == 0) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      execl("/bin/sh", "sh", "-c", ("exec " + command + " 2>" + gt_ + "/stderr").c_str(), nullptr);
      _exit(127);
    }
  }
  ~Victim() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Waits for the victim to end (after a fatal signal); the destructor then signals no one.
  int wait_exit() {
    int status = 0;
    if (pid_ > 0 && waitpid(pid_, &status, 0) == pid_) pid_ = -1;
    return status;
  }
  bool alive() const { return kill(pid_, 0) == 0; }
  // Not stopped or traced-stopped: state field of /proc/PID/stat.
  char state() const {
    std::string stat = read_file("/proc/" + std::to_string(pid_) + "/stat");
    auto close = stat.rfind(')');
    return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
  }
  std::string stderr_text() const { return read_file(gt_ + "/stderr"); }

 private:
  std::string gt_;
  pid_t pid_ = -1;
};

// A device key and a lab key made once, and the commands the end-to-end tests run on a victim:
// the agent's capture into a sealed bundle, recovery, and opening a bundle's core stream.
class CaptureKit {
 public:
  CaptureKit() {
    ok_ = run(mlfx_bin() + " keys gen --kind device --out " + (dir_ / "dev")).exit_code == 0 &&
          run(mlfx_bin() + " keys gen --kind lab --out " + (dir_ / "lab")).exit_code == 0;
  }
  bool ok() const { return ok_; }
  std::string lab_key() const { return dir_ / "lab.key"; }
  std::string lab_pub() const { return dir_ / "lab.pub"; }
  std::string device_key() const { return dir_ / "dev.key"; }

  CommandResult capture(pid_t pid, const std::string& bundle) const {
    return run(agent_bin() + " capture --pid " + std::to_string(pid) + " --out " + bundle + " --device-key " +
               (dir_ / "dev.key") + " --recipient " + (dir_ / "lab.pub") + " --case TEST -q");
  }
  CommandResult recover(const std::string& input, const std::string& out) const {
    return run(mlfx_bin() + " recover " + input + " --key " + lab_key() + " --out " + out + " -q");
  }
  // The bundle's core stream as a plain, writable file at `core` (opened into `scratch`).
  CommandResult open_core(const std::string& bundle, const std::string& scratch, const std::string& core) const {
    auto r = run(mlfx_bin() + " bundle open -q " + bundle + " --key " + lab_key() + " --out " + scratch);
    if (r.exit_code != 0) return r;
    fs::copy_file(scratch + "/core", core);
    fs::permissions(core, fs::perms::owner_read | fs::perms::owner_write);
    return r;
  }

 private:
  TempDir dir_;
  bool ok_ = false;
};

}  // namespace mlfx::testing
