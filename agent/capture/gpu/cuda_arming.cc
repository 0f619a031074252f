#include "capture/gpu/cuda_arming.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "capture/process/procfs.h"
#include "mlfx/base/file.h"

namespace mlfx::agent::gpu {

namespace {

constexpr size_t kMaxDriverFileBytes = 64u << 10;
constexpr size_t kMaxGpus = 64;

std::string parent_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
}

Status check_dir(const struct stat& st, const std::string& dir) {
  if (!S_ISDIR(st.st_mode)) return fail(Errc::kPermission, dir + " is not a directory");
  if (st.st_uid != ::geteuid())
    return fail(Errc::kPermission,
                dir + " belongs to uid " + std::to_string(st.st_uid) +
                    ", not to the agent: remove it (the agent makes it, mode 1733)");
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
    return fail(Errc::kPermission,
                dir + " is writable by others without the sticky bit: chmod 1733 " + dir);
  return {};
}

// A specifier-free check of one template; `what` names it in messages.
Status check_template(const std::string& templ, const std::string& dir, const char* what) {
  if (templ.size() > kMaxTemplateBytes)
    return fail(Errc::kPermission, std::string(what) + " of the target is longer than " +
                                       std::to_string(kMaxTemplateBytes) + " bytes: refused");
  const size_t first = templ.find_first_not_of(" \t");
  if (first != std::string::npos && templ[first] == '|')
    return fail(Errc::kPermission, std::string(what) +
                                       " of the target is a '| command' form: the agent never runs "
                                       "what a target says; refused");
  for (unsigned char c : templ)
    if (c < 0x20 || c == 0x7f)
      return fail(Errc::kPermission,
                  std::string(what) + " of the target holds a control character: refused");
  if (templ.find("..") != std::string::npos)
    return fail(Errc::kPermission, std::string(what) + " of the target holds '..': refused");
  if (templ.rfind(dir + "/", 0) != 0)
    return fail(Errc::kPermission,
                std::string(what) + " of the target, '" + templ + "', is outside the agent's " +
                    dir + ": refused (arm the target with 'mlfx-agent gpu-env --dir " + dir + "')");
  return {};
}

std::string host_name() {
  char h[256] = {};
  if (::gethostname(h, sizeof h - 1) != 0) return {};
  return h;
}

// The pid as the target sees itself (the driver expands %p with its own getpid()): the last
// NSpid of /proc/PID/status.
pid_t namespace_pid(pid_t pid) {
  auto status = process::read_proc_file(process::proc_path(pid, "status"), 1 << 16);
  if (!status) return pid;
  auto nspid = process::status_field(*status, "NSpid");
  if (!nspid) return pid;
  const size_t last = nspid->find_last_of(" \t");
  const std::string inner = last == std::string::npos ? *nspid : nspid->substr(last + 1);
  const long v = std::strtol(inner.c_str(), nullptr, 10);
  return v > 0 ? static_cast<pid_t>(v) : pid;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> arming_environment(const std::string& dir,
                                                                    const std::string& cupti_library) {
  std::vector<std::pair<std::string, std::string>> env = {{"CUDA_ENABLE_USER_TRIGGERED_COREDUMP", "1"},
                                                          {"CUDA_COREDUMP_PIPE", dir + "/corepipe.%p"},
                                                          {"CUDA_COREDUMP_FILE", dir + "/core.%p"},
                                                          {"CUDA_COREDUMP_GENERATION_FLAGS", kGenerationFlags},
                                                          {"CUDA_COREDUMP_SHOW_PROGRESS", "1"}};
  if (!cupti_library.empty()) {
    env.push_back({"CUDA_INJECTION64_PATH", cupti_library});
    env.push_back({"MLFX_CUPTI_TRIGGER", dir + "/cupti-trigger.%p"});
    env.push_back({"MLFX_CUPTI_OUTPUT", dir + "/cupti-core.%p"});
  }
  return env;
}

Status ensure_gpu_dir(const std::string& dir) {
  if (dir.empty() || dir[0] != '/')
    return fail(Errc::kInvalidArgument, "the GPU directory must be absolute: " + dir);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) == 0) return check_dir(st, dir);
  if (errno != ENOENT) return fail(Errc::kIo, "stat " + dir + ": " + process::errno_name(errno));
  const std::string parent = parent_of(dir);
  if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST)
    return fail(Errc::kIo, "mkdir " + parent + ": " + process::errno_name(errno));
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return fail(Errc::kIo, "mkdir " + dir + ": " + process::errno_name(errno));
  if (::chmod(dir.c_str(), 01733) != 0)
    return fail(Errc::kIo, "chmod " + dir + ": " + process::errno_name(errno));
  if (::lstat(dir.c_str(), &st) != 0)
    return fail(Errc::kIo, "stat " + dir + ": " + process::errno_name(errno));
  return check_dir(st, dir);
}

Result<int> open_gpu_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return fail(errno == ENOENT ? Errc::kNotFound : Errc::kIo,
                "the agent's GPU directory " + dir + ": " + process::errno_name(errno) +
                    " (make it with 'mlfx-agent gpu-env --dir " + dir + "' as root)");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return fail(Errc::kIo, "stat " + dir + ": " + process::errno_name(errno));
  }
  if (auto ok = check_dir(st, dir); !ok) {
    ::close(fd);
    return fail(std::move(ok).error());
  }
  return fd;
}

Result<std::string> expand_template(const std::string& templ, const std::string& dir, pid_t pid,
                                    const std::string& host) {
  std::string out;
  for (size_t i = 0; i < templ.size(); ++i) {
    if (templ[i] != '%') {
      out += templ[i];
      continue;
    }
    const char spec = i + 1 < templ.size() ? templ[++i] : '\0';
    if (spec == 'p')
      out += std::to_string(pid);
    else if (spec == 'h')
      out += host;
    else if (spec == '%')
      out += '%';
    else
      return fail(Errc::kPermission,
                  std::string("the template '") + templ + "' holds '%" +
                      (spec ? std::string(1, spec) : "") +
                      "': only %p, %h and %% name a path the agent can know in advance");
  }
  const std::string name = out.size() > dir.size() + 1 ? out.substr(dir.size() + 1) : "";
  if (out.rfind(dir + "/", 0) != 0 || name.empty() || name.find('/') != std::string::npos ||
      name == "." || host.find('/') != std::string::npos)
    return fail(Errc::kPermission,
                "the template '" + templ + "' does not name a file directly in " + dir);
  return name;
}

json::Json Arming::to_json() const {
  json::Json j = {{"armed", armed}};
  if (!armed) j["why_not"] = why_not;
  if (!pipe_template.empty()) j["CUDA_COREDUMP_PIPE"] = pipe_template;
  j["cupti_copy_out"] = cupti;
  if (cupti) {
    j["MLFX_CUPTI_TRIGGER"] = cupti_trigger_template;
    j["MLFX_CUPTI_OUTPUT"] = cupti_output_template;
  }
  if (!file_template.empty()) j["CUDA_COREDUMP_FILE"] = file_template;
  j["CUDA_COREDUMP_GENERATION_FLAGS"] = flags;
  j["CUDA_COREDUMP_SHOW_PROGRESS"] = show_progress;
  return j;
}

Result<Arming> parse_arming(std::string_view environ, const std::string& dir, pid_t ns_pid,
                            const std::string& host) {
  const bool cut = environ.size() >= kMaxEnvironBytes;
  if (cut) environ = environ.substr(0, kMaxEnvironBytes);
  std::optional<std::string> enable, pipe, file, flags, progress, cupti_trigger, cupti_output;
  size_t pos = 0;
  while (pos < environ.size()) {
    size_t end = environ.find('\0', pos);
    if (end == std::string_view::npos) end = environ.size();
    const std::string_view entry = environ.substr(pos, end - pos);
    pos = end + 1;
    const size_t eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view key = entry.substr(0, eq);
    // Bounded: a value longer than a template may be is kept one byte too long, refused below.
    std::string value(entry.substr(eq + 1, std::min(entry.size() - eq - 1, kMaxTemplateBytes + 1)));
    if (key == "CUDA_ENABLE_USER_TRIGGERED_COREDUMP")
      enable = value;
    else if (key == "CUDA_COREDUMP_PIPE")
      pipe = value;
    else if (key == "CUDA_COREDUMP_FILE")
      file = value;
    else if (key == "CUDA_COREDUMP_GENERATION_FLAGS")
      flags = value;
    else if (key == "CUDA_COREDUMP_SHOW_PROGRESS")
      progress = value;
    else if (key == "MLFX_CUPTI_TRIGGER")
      cupti_trigger = value;
    else if (key == "MLFX_CUPTI_OUTPUT")
      cupti_output = value;
  }
  Arming a;
  if (cupti_trigger && cupti_output) {  // the CUPTI library's copy-out, checked like the driver's
    a.cupti_trigger_template = *cupti_trigger;
    a.cupti_output_template = *cupti_output;
    MLFX_TRY(check_template(*cupti_trigger, dir, "MLFX_CUPTI_TRIGGER"));
    MLFX_TRY(check_template(*cupti_output, dir, "MLFX_CUPTI_OUTPUT"));
    MLFX_ASSIGN(a.cupti_trigger_name, expand_template(*cupti_trigger, dir, ns_pid, host));
    MLFX_ASSIGN(a.cupti_output_name, expand_template(*cupti_output, dir, ns_pid, host));
    if (a.cupti_trigger_name == a.cupti_output_name)
      return fail(Errc::kPermission, "the target's CUPTI trigger and output are the same path: refused");
    a.cupti = true;
  }
  a.flags = flags.value_or("");
  a.show_progress = progress.value_or("") == "1";
  const std::string how =
      "start the target with the variables of 'mlfx-agent gpu-env --dir " + dir + "'";
  if (enable.value_or("") != "1") {
    a.why_not =
        std::string("the target was not started with CUDA_ENABLE_USER_TRIGGERED_COREDUMP=1") +
        (cut ? " (or past the first MiB of its environment)" : "") + ": " + how;
    return a;
  }
  if (!pipe || !file) {
    a.why_not = std::string("the target has no ") +
                (!pipe ? "CUDA_COREDUMP_PIPE" : "CUDA_COREDUMP_FILE") +
                " (the driver's default is in its working directory, not the agent's): " + how;
    return a;
  }
  a.pipe_template = *pipe;
  a.file_template = *file;
  MLFX_TRY(check_template(*pipe, dir, "CUDA_COREDUMP_PIPE"));
  MLFX_TRY(check_template(*file, dir, "CUDA_COREDUMP_FILE"));
  if (a.flags.size() > kMaxTemplateBytes)
    return fail(Errc::kPermission,
                "CUDA_COREDUMP_GENERATION_FLAGS of the target is too long: refused");
  MLFX_ASSIGN(a.pipe_name, expand_template(*pipe, dir, ns_pid, host));
  MLFX_ASSIGN(a.file_name, expand_template(*file, dir, ns_pid, host));
  if (a.pipe_name == a.file_name)
    return fail(Errc::kPermission,
                "the target's dump pipe and dump file are the same path: refused");
  a.armed = true;
  return a;
}

Result<Arming> read_arming(pid_t pid, const std::string& dir) {
  // A procfs read stops at kMaxEnvironBytes: read_proc_file refuses more, so read by hand.
  const std::string path = process::proc_path(pid, "environ");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(errno == ENOENT ? Errc::kNotFound : Errc::kIo,
                "reading " + path + ": " + process::errno_name(errno));
  File f(fd, path);
  std::string env(kMaxEnvironBytes, '\0');
  MLFX_ASSIGN(size_t n, f.read_full(reinterpret_cast<uint8_t*>(env.data()), env.size()));
  env.resize(n);
  return parse_arming(env, dir, namespace_pid(pid), host_name());
}

json::Json nvidia_driver_facts(const std::string& root) {
  auto version = read_small_file(root + "/version", kMaxDriverFileBytes);
  if (!version) return {{"available", false}, {"root", root}, {"why", version.error().message()}};
  json::Json facts = {{"available", true}, {"root", root}, {"version", trimmed(*version)}};
  json::Json gpus = json::Json::array();
  std::vector<std::string> names;
  if (DIR* d = ::opendir((root + "/gpus").c_str())) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.' && names.size() < kMaxGpus) names.push_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    auto info = read_small_file(root + "/gpus/" + name + "/information", kMaxDriverFileBytes);
    gpus.push_back(
        {{"bus", name}, {"information", info ? json::Json(trimmed(*info)) : json::Json(nullptr)}});
  }
  facts["gpus"] = gpus;
  return facts;
}

std::optional<std::string> find_cuda_gdb() {
  const std::string installed = "/usr/local/cuda/bin/cuda-gdb";
  if (::access(installed.c_str(), X_OK) == 0) return installed;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t pos = 0;
  while (pos <= dirs.size()) {
    size_t end = dirs.find(':', pos);
    if (end == std::string::npos) end = dirs.size();
    const std::string d = dirs.substr(pos, end - pos);
    pos = end + 1;
    if (d.empty() || d[0] != '/') continue;  // a relative PATH entry is not trusted
    const std::string candidate = d + "/cuda-gdb";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

std::vector<std::string> cuda_gdb_argv(const std::string& cuda_gdb, pid_t pid,
                                       const std::string& core_path) {
  return {cuda_gdb, "-nx",
          "-q",     "-batch",
          "-p",     std::to_string(pid),
          "-ex",    "generate-cuda-core-file " + core_path,
          "-ex",    "detach"};
}

}  // namespace mlfx::agent::gpu
