#include "capture/physical/kernel_module.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <thread>

#include "capture/process/procfs.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::agent::physical {

namespace {

constexpr size_t kMaxModuleSize = 64u << 20;

std::string running_release() {
  utsname u{};
  return uname(&u) == 0 ? u.release : "";
}

// Why the kernel refused to load a module, and what to do (init_module(2), module signing).
std::string load_refusal(int err, const ModuleFile& m, const std::string& already_loaded_advice) {
  const std::string who = "loading " + m.name + " from " + m.path + " failed: " + process::errno_name(err);
  switch (err) {
    case EEXIST:
      return who + ": a module named " + m.name + " is already loaded. " + already_loaded_advice;
    case EPERM:
      return who + ": module loading is not allowed (needs root with CAP_SYS_MODULE; or the kernel refuses "
                   "all modules: kernel.modules_disabled=1, or lockdown under Secure Boot refuses unsigned ones)";
    case EKEYREJECTED:
    case ENOKEY:
    case EBADMSG:
      return who + ": the kernel requires a module signed by a key it trusts (Secure Boot or "
                   "module.sig_enforce): sign it with an enrolled key (DKMS: enroll /var/lib/dkms/mok.pub with "
                   "'mokutil --import' and reboot)";
    case ENOEXEC:
      return who + ": not a loadable module for this kernel (its vermagic is '" + m.vermagic +
             "', this kernel is " + running_release() + "; rebuild it for this kernel)";
    case ENOENT:
      return who + ": the module needs symbols this kernel lacks (built against other headers? 'dmesg' names "
                   "them); rebuild it for this kernel";
    case EINVAL:
      return who + ": the kernel or the module's init refused it or its parameters ('dmesg' may say why)";
    default:
      return who + " (the module's init failed; 'dmesg' may say why)";
  }
}

// Whole-file read of a module (they are small) from an open descriptor.
Result<Bytes> read_all(File& f, uint64_t size, const std::string& path) {
  Bytes data(size);
  MLFX_TRY(f.pread_exact(0, data.data(), data.size()));
  struct stat st {};
  if (fstat(f.fd(), &st) != 0 || static_cast<uint64_t>(st.st_size) != size)
    return fail(Errc::kIo, path + " changed while it was read");
  return data;
}

}  // namespace

std::string dkms_module_path(const std::string& file) {
  return "/lib/modules/" + running_release() + "/updates/dkms/" + file;
}

Result<std::string> modinfo_field(ByteView elf, const std::string& key) {
  auto bad = [](const std::string& why) { return fail(Errc::kBadFormat, "not a kernel module: " + why); };
  if (elf.size() < 64 || std::memcmp(elf.data(), "\x7f" "ELF", 4) != 0) return bad("no ELF header");
  if (elf[4] != 2 || elf[5] != 1) return bad("not a 64-bit little-endian ELF file");
  const uint64_t shoff = load_le<uint64_t>(elf.data() + 0x28);
  const uint16_t shentsize = load_le<uint16_t>(elf.data() + 0x3A), shnum = load_le<uint16_t>(elf.data() + 0x3C),
                 shstrndx = load_le<uint16_t>(elf.data() + 0x3E);
  if (shentsize < 64 || shstrndx >= shnum || shoff > elf.size() || uint64_t(shnum) * shentsize > elf.size() - shoff)
    return bad("section headers out of bounds");
  auto section = [&](uint16_t i, uint64_t& off, uint64_t& size) {
    const uint8_t* sh = elf.data() + shoff + uint64_t(i) * shentsize;
    off = load_le<uint64_t>(sh + 24);
    size = load_le<uint64_t>(sh + 32);
    return off <= elf.size() && size <= elf.size() - off;
  };
  uint64_t str_off = 0, str_size = 0;
  if (!section(shstrndx, str_off, str_size)) return bad("section names out of bounds");
  for (uint16_t i = 0; i < shnum; ++i) {
    const uint32_t name = load_le<uint32_t>(elf.data() + shoff + uint64_t(i) * shentsize);
    if (name >= str_size) continue;
    std::string_view sname(reinterpret_cast<const char*>(elf.data() + str_off + name),
                           strnlen(reinterpret_cast<const char*>(elf.data() + str_off + name), str_size - name));
    if (sname != ".modinfo") continue;
    uint64_t off = 0, size = 0;
    if (!section(i, off, size)) return bad(".modinfo out of bounds");
    std::string_view info(reinterpret_cast<const char*>(elf.data() + off), size);
    const std::string prefix = key + "=";
    while (!info.empty()) {
      const size_t end = info.find('\0');
      std::string_view field = info.substr(0, end);
      if (field.rfind(prefix, 0) == 0) return std::string(field.substr(prefix.size()));
      if (end == std::string_view::npos) break;
      info.remove_prefix(end + 1);
    }
    return fail(Errc::kNotFound, "the module's .modinfo has no " + key + "=");
  }
  return bad("no .modinfo section");
}

Result<ModuleFile> open_module_file(const std::string& path, const std::string& what) {
  ModuleFile m;
  m.path = path;
  auto f = File::open_read(path);
  if (!f) {
    if (f.error().code() == Errc::kNotFound)
      return fail(Errc::kNotFound, what + " module not found at " + path +
                                       " (install it for this kernel, e.g. with DKMS, or give --module PATH)");
    return fail(std::move(f).error().context("opening the " + what + " module"));
  }
  m.file = std::move(*f);
  MLFX_ASSIGN(m.size, m.file.size());
  if (m.size > kMaxModuleSize) return fail(Errc::kBadFormat, path + " is too large for a kernel module");
  MLFX_ASSIGN(Bytes data, read_all(m.file, m.size, path));
  if (data.size() >= 6 && (std::memcmp(data.data(), "\xfd" "7zXZ", 5) == 0 || std::memcmp(data.data(), "\x28\xb5\x2f\xfd", 4) == 0 ||
                           std::memcmp(data.data(), "\x1f\x8b", 2) == 0))
    return fail(Errc::kUnsupported, path + " is compressed; decompress it (xz -dk / zstd -d / gunzip) and give "
                                           "--module with the .ko");
  m.sha256 = crypto::sha256_hex(data);
  auto name = modinfo_field(data, "name");
  if (!name) return fail(std::move(name).error().context(path));
  m.name = *name;
  if (auto v = modinfo_field(data, "vermagic")) m.vermagic = *v;
  const std::string release = running_release();
  const std::string built_for = m.vermagic.substr(0, m.vermagic.find(' '));
  if (!m.vermagic.empty() && built_for != release)
    return fail(Errc::kUnsupported, what + " module " + path + " was built for kernel " + built_for +
                                        ", this kernel is " + release + "; build it for " + release +
                                        " (dkms install, or make -C ... KVER=" + release + ") and give --module");
  return m;
}

Status load_module(const ModuleFile& m, const std::string& params, const std::string& already_loaded_advice) {
  long r = syscall(SYS_finit_module, m.file.fd(), params.c_str(), 0);
  if (r != 0 && errno == ENOSYS) {
    Bytes image(m.size);
    MLFX_TRY(m.file.pread_exact(0, image.data(), image.size()));
    r = syscall(SYS_init_module, image.data(), image.size(), params.c_str());
  }
  if (r == 0) return {};
  const int err = errno;
  return fail(err == EEXIST ? Errc::kExists : err == EPERM ? Errc::kPermission : Errc::kIo,
              load_refusal(err, m, already_loaded_advice));
}

Status unload_module(const std::string& name) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (true) {
    if (syscall(SYS_delete_module, name.c_str(), O_NONBLOCK) == 0) return {};
    const int err = errno;
    if (err == ENOENT) return {};  // not loaded (its init failed, or someone removed it)
    if ((err == EAGAIN || err == EBUSY || err == EWOULDBLOCK) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    return fail(Errc::kIo, "unloading kernel module " + name + ": " + process::errno_name(err) +
                               "; remove it with 'rmmod " + name + "'");
  }
}

bool module_loaded(const std::string& name) {
  struct stat st {};
  return ::stat(("/sys/module/" + name + "/initstate").c_str(), &st) == 0;
}

json::Json module_sysfs_facts(const std::string& name) {
  json::Json j = json::Json::object();
  for (const char* key : {"coresize", "initsize", "refcnt"}) {
    auto text = process::read_proc_file("/sys/module/" + name + "/" + key, 64);
    uint64_t v = 0;
    const char* end = text ? text->data() + text->size() : nullptr;
    if (text && std::from_chars(text->data(), end, v).ec == std::errc()) j[key] = v;
  }
  if (auto taint = process::read_proc_file("/sys/module/" + name + "/taint", 64)) {
    std::string t = *taint;
    while (!t.empty() && t.back() == '\n') t.pop_back();
    j["taint"] = t;
  }
  return j;
}

}  // namespace mlfx::agent::physical
