#include "mlfx/base/file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace mlfx {

std::string errno_text(int err) { return std::strerror(err); }

static Error io_error(const std::string& what, const std::string& path, int err) {
  return Error(err == EEXIST ? Errc::kExists : err == ENOENT ? Errc::kNotFound : Errc::kIo,
               what + " " + path + ": " + errno_text(err));
}

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

File::~File() {
  if (fd_ > 2) ::close(fd_);
}

Result<File> File::open_read(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(io_error("cannot open", path, errno));
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    return fail(Errc::kInvalidArgument, path + " is a directory, not a file");
  }
  return File(fd, path);
}

Result<File> File::create_new(const std::string& path, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return fail(io_error("cannot create", path, errno));
  return File(fd, path);
}

Result<File> File::create_memory(const std::string& name) {
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) return fail(Errc::kIo, "memfd_create: " + errno_text(errno));
  return File(fd, "/proc/self/fd/" + std::to_string(fd));
}

File File::standard_input() { return File(STDIN_FILENO, "-"); }

Result<size_t> File::read_full(uint8_t* buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::read(fd_, buf + got, len - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(io_error("cannot read", path_, errno));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return got;
}

Status File::pread_exact(uint64_t offset, uint8_t* buf, size_t len) const {
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd_, buf + got, len - got, static_cast<off_t>(offset + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(io_error("cannot read", path_, errno));
    }
    if (n == 0)
      return fail(Errc::kBadFormat, path_ + ": unexpected end of file at offset " +
                                        std::to_string(offset + got));
    got += static_cast<size_t>(n);
  }
  return {};
}

Status File::write_all(ByteView data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(io_error("cannot write", path_, errno));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Status File::pwrite_all(uint64_t offset, ByteView data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(io_error("cannot write", path_, errno));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<uint64_t> File::size() const {
  struct stat st;
  if (fstat(fd_, &st) != 0) return fail(io_error("cannot stat", path_, errno));
  return static_cast<uint64_t>(st.st_size);
}

Status File::sync() {
  if (fsync(fd_) != 0 && errno != EINVAL) return fail(io_error("cannot fsync", path_, errno));
  return {};
}

Status File::close() {
  if (fd_ < 0) return {};
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) return fail(io_error("cannot close", path_, errno));
  return {};
}

Result<std::string> read_small_file(const std::string& path, size_t max_size) {
  MLFX_ASSIGN(File f, File::open_read(path));
  MLFX_ASSIGN(uint64_t size, f.size());
  if (size > max_size)
    return fail(Errc::kInvalidArgument,
                path + " is " + std::to_string(size) + " bytes, more than the " +
                    std::to_string(max_size) + " expected");
  std::string s(size, '\0');
  MLFX_ASSIGN(size_t n, f.read_full(reinterpret_cast<uint8_t*>(s.data()), s.size()));
  s.resize(n);
  return s;
}

Status write_new_file(const std::string& path, std::string_view data, mode_t mode) {
  MLFX_ASSIGN(File f, File::create_new(path, mode));
  if (auto st = f.write_all(as_bytes(data)); !st) {
    ::unlink(path.c_str());
    return st;
  }
  MLFX_TRY(f.sync());
  return f.close();
}

Status fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return fail(io_error("cannot open", dir, errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return fail(io_error("cannot sync", dir, err));
  return {};
}

Status replace_file(const std::string& path, std::string_view data, mode_t mode) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = dir + "/." + name + ".tmp.XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) return fail(io_error("cannot create a file in", dir, errno));
  File f(fd, tmp);
  Status st = f.write_all(as_bytes(data));
  if (st && ::fchmod(fd, mode) != 0) st = fail(io_error("cannot chmod", tmp, errno));
  if (st) st = f.sync();
  if (st) st = f.close();
  if (st && ::rename(tmp.c_str(), path.c_str()) != 0) st = fail(io_error("cannot rename to", path, errno));
  if (!st) {
    ::unlink(tmp.c_str());
    return st;
  }
  return fsync_dir(dir);
}

namespace {
Result<DirLock> lock_dir(const std::string& dir, int how, DirLock (*make)(int)) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return fail(errno == ENOENT ? Errc::kNotFound : Errc::kIo,
                "cannot open directory " + dir + ": " + errno_text(errno));
  if (::flock(fd, how) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) return fail(Errc::kExists, dir + " is locked by another process");
    return fail(io_error("cannot lock", dir, err));
  }
  return make(fd);
}
}  // namespace

Result<DirLock> DirLock::acquire(const std::string& dir) {
  return lock_dir(dir, LOCK_EX, [](int fd) { return DirLock(fd); });
}
Result<DirLock> DirLock::try_acquire(const std::string& dir) {
  return lock_dir(dir, LOCK_EX | LOCK_NB, [](int fd) { return DirLock(fd); });
}
DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the lock
}

}  // namespace mlfx

namespace mlfx {

Status make_output_dir(const std::string& dir, std::initializer_list<const char*> owned) {
  if (mkdir(dir.c_str(), 0750) == 0) return {};
  if (errno != EEXIST) return fail(Errc::kIo, "cannot create " + dir + ": " + std::string(strerror(errno)));
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(Errc::kExists, dir + " exists and is not a directory");
  for (const char* name : owned)
    if (access((dir + "/" + name).c_str(), F_OK) == 0)
      return fail(Errc::kExists, "output directory " + dir + " already holds " + name + "; choose a new one");
  return {};
}

Rollback remove_unless_committed(const std::string& path) {
  return Rollback([path] { ::unlink(path.c_str()); });
}

Result<File> open_output(const std::string& path, mode_t mode) {
  int fd = -1;
  if (path == "-") {
    fd = STDOUT_FILENO;
  } else if (path.rfind("/dev/fd/", 0) == 0) {
    char* end = nullptr;
    const long n = std::strtol(path.c_str() + 8, &end, 10);
    if (*end != '\0' || end == path.c_str() + 8 || n < 0 || n > 65535)
      return fail(Errc::kInvalidArgument, path + " is not a descriptor");
    fd = static_cast<int>(n);
  } else {
    return File::create_new(path, mode);
  }
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY)
    return fail(Errc::kInvalidArgument, path + " is not open for writing");
  const int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return fail(Errc::kIo, "cannot use " + path + ": " + errno_text(errno));
  return File(copy, path);
}

}  // namespace mlfx
