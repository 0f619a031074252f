#include "capture/physical/kmod_source.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "capture/physical/lime_format.h"
#include "capture/process/procfs.h"
#include "mlfx_mem_uapi.h"

namespace mlfx::agent::physical {

namespace {

constexpr uint32_t kMaxRanges = 1u << 16;  // resources in an iomem tree: a few hundred in practice
constexpr uint64_t kMaxPiece = 64u << 20;  // bytes asked of one pread (a chunk is smaller)

std::string c_string(const char* p, size_t max) { return std::string(p, strnlen(p, max)); }

// "10:123\n" from /sys/class/misc/mlfx_mem/dev.
std::optional<dev_t> sysfs_device_number() {
  auto text = process::read_proc_file("/sys/class/misc/" + std::string(MLFX_MEM_DEVICE_NAME) + "/dev", 64);
  if (!text) return std::nullopt;
  unsigned major = 0, minor = 0;
  const char* p = text->data();
  const char* end = p + text->size();
  auto a = std::from_chars(p, end, major);
  if (a.ec != std::errc() || a.ptr == end || *a.ptr != ':') return std::nullopt;
  auto b = std::from_chars(a.ptr + 1, end, minor);
  if (b.ec != std::errc()) return std::nullopt;
  return makedev(major, minor);
}

std::string open_refusal(int err) {
  std::string why = "opening " + std::string(kKmodDevice) + ": " + process::errno_name(err);
  if (err == EBUSY) return why + ": another reader has it open (one at a time); is another capture running?";
  if (err == EPERM || err == EACCES) return why + ": reading physical memory needs root (CAP_SYS_RAWIO)";
  return why;
}

}  // namespace

std::vector<PhysRange> kmod_ram(const std::vector<KmodRange>& tree) {
  std::vector<IomemEntry> ram;
  for (const KmodRange& r : tree)
    if (r.flags & MLFX_MEM_RANGE_RAM) ram.push_back({r.range.start, r.range.end, "System RAM", r.depth});
  return all_system_ram(ram);
}

std::string kmod_page_reason(int err) {
  switch (err) {
    case ENXIO: return "ENXIO: not System RAM, or no struct page backs the frame (pfn_valid false)";
    case EHWPOISON: return "EHWPOISON: the page is marked hardware-poisoned";
    case EAGAIN: return "EAGAIN: the page is offline (ballooned, hot-removed) or not safe to map";
    case EIO: return "EIO: a machine check while copying the page";
    default: return "";
  }
}

Result<std::unique_ptr<KmodSource>> KmodSource::create(PhysicalOptions options) {
  std::unique_ptr<KmodSource> s(new KmodSource(std::move(options)));
  MLFX_TRY(s->prepare(kKmodModuleFile, "mlfx_mem"));
  return s;
}

KmodSource::~KmodSource() { (void)release_module(); }

std::string KmodSource::method() const {
  return "mlfx_mem.ko (" + module_.name + ") loaded with finit_module; physical RAM read with pread from " +
         std::string(kKmodDevice) + " into the sealer, LiME range headers written by the agent; unreadable pages "
         "split ranges and are listed, never zero-filled";
}

Status KmodSource::before_freeze() {
  MLFX_TRY(load_module(module_, "",
                       "Another capture may be using it (one reader at a time); if none is running, remove it with "
                       "'rmmod " + module_.name + "' and try again"));
  loaded_ = true;
  MLFX_TRY(open_device());
  MLFX_TRY(read_info_and_ranges());
  return {};
}

// /dev/mlfx_mem when it is the module's device; else (no devtmpfs, udev late, a read-only /dev)
// a node of our own in a private directory, removed as soon as it is open.
Status KmodSource::open_device() {
  const std::optional<dev_t> number = sysfs_device_number();
  struct stat st {};
  if (::stat(kKmodDevice, &st) == 0 && S_ISCHR(st.st_mode) && (!number || st.st_rdev == *number)) {
    const int fd = ::open(kKmodDevice, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(Errc::kIo, open_refusal(errno));
    device_ = File(fd, kKmodDevice);
    device_path_ = kKmodDevice;
    return {};
  }
  if (!number)
    return fail(Errc::kNotFound, std::string(kKmodDevice) + " is missing and /sys/class/misc/" +
                                     MLFX_MEM_DEVICE_NAME + "/dev does not say its number: is the module loaded?");
  std::string tried;
  for (const char* parent : {"/run", "/dev/shm", "/tmp"}) {
    std::string dir = std::string(parent) + "/mlfx-kmod.XXXXXX";
    if (!::mkdtemp(dir.data())) continue;
    const std::string node = dir + "/" + MLFX_MEM_DEVICE_NAME;
    int fd = -1, err = 0;
    if (::mknod(node.c_str(), S_IFCHR | 0600, *number) == 0) {
      fd = ::open(node.c_str(), O_RDONLY | O_CLOEXEC);
      err = errno;
      ::unlink(node.c_str());
    } else {
      err = errno;
    }
    ::rmdir(dir.c_str());
    if (fd >= 0) {
      device_ = File(fd, node);
      device_path_ = node + " (private node; " + kKmodDevice + " missing)";
      return {};
    }
    if (err == EBUSY || err == EPERM) return fail(Errc::kIo, open_refusal(err));
    tried += std::string(tried.empty() ? "" : ", ") + parent + " (" + process::errno_name(err) + ")";
  }
  return fail(Errc::kIo, std::string(kKmodDevice) + " is missing and no private device node could be made: " + tried);
}

Status KmodSource::read_info_and_ranges() {
  mlfx_mem_info info{};
  if (::ioctl(device_.fd(), MLFX_MEM_IOC_INFO, &info) != 0)
    return fail(Errc::kIo, "MLFX_MEM_IOC_INFO: " + process::errno_name(errno));
  if (info.uapi_version != MLFX_MEM_UAPI_VERSION)
    return fail(Errc::kUnsupported, "mlfx_mem speaks interface version " + std::to_string(info.uapi_version) +
                                        ", this agent " + std::to_string(MLFX_MEM_UAPI_VERSION) +
                                        "; use the module built with this agent");
  const std::string release = c_string(info.kernel_release, sizeof info.kernel_release);
  if (info.page_size != kernel_.page_size)
    return fail(Errc::kBadFormat, "mlfx_mem reports a page size of " + std::to_string(info.page_size) +
                                      ", the kernel " + std::to_string(kernel_.page_size));
  info_ = {{"uapi_version", info.uapi_version},
           {"page_size", info.page_size},
           {"module_version", c_string(info.module_version, sizeof info.module_version)},
           {"kernel_release", release}};
  footprint_ = {{"core_bytes", info.module_core_bytes}, {"alloc_bytes", info.module_alloc_bytes}};

  std::vector<mlfx_mem_range> raw(256);
  for (int attempt = 0;; ++attempt) {
    mlfx_mem_ranges req{};
    req.capacity = static_cast<uint32_t>(raw.size());
    req.ranges = reinterpret_cast<uintptr_t>(raw.data());
    if (::ioctl(device_.fd(), MLFX_MEM_IOC_RANGES, &req) != 0)
      return fail(Errc::kIo, "MLFX_MEM_IOC_RANGES: " + process::errno_name(errno));
    if (req.count > kMaxRanges)
      return fail(Errc::kBadFormat, "mlfx_mem reports " + std::to_string(req.count) + " iomem resources");
    if (req.count <= req.capacity) {
      raw.resize(req.count);
      break;
    }
    if (attempt == 4) return fail(Errc::kIo, "the iomem tree kept growing while it was read");
    raw.resize(req.count + 16);
  }
  tree_.clear();
  for (const mlfx_mem_range& r : raw) {
    if (r.end < r.start)
      return fail(Errc::kBadFormat, "mlfx_mem lists a range that ends before it starts: " + hex_address(r.start));
    tree_.push_back({{r.start, r.end}, r.depth, r.flags, c_string(r.name, sizeof r.name)});
  }
  if (kmod_ram(tree_).empty()) return fail(Errc::kBadFormat, "mlfx_mem lists no System RAM");
  return {};
}

void LimeImageWriter::note_unreadable(uint64_t start, uint64_t end, int err) {
  std::string reason = err ? kmod_page_reason(err) : "the module returned no bytes for this page";
  if (!unreadable_.empty() && unreadable_.back().range.end + 1 == start && unreadable_.back().reason == reason) {
    unreadable_.back().range.end = end;
    return;
  }
  unreadable_.push_back({{start, end}, std::move(reason)});
}

// One RAM range: pieces of [header | data] read straight into the chunk buffers; a chunk's
// last bytes, too few for a header and a page, get a one-page piece through a bounce page.
Status LimeImageWriter::read_range(bundle::BundleWriter& w, PhysRange ram, Progress* progress) {
  const uint64_t page = page_;
  Bytes& bounce = bounce_;
  uint64_t cur = ram.start;
  while (cur <= ram.end) {
    if (cancel_ && cancel_->load()) return fail(Errc::kIo, "interrupted");
    const uint64_t left = ram.end - cur + 1;
    MLFX_ASSIGN(std::span<uint8_t> room, w.buffer(kLimeHeaderSize + std::min(left, kMaxPiece)));
    // Pieces end on page boundaries (or the range's end), so that no page of the image is split
    // between two LiME ranges: readers map a page to one place in the file.
    uint64_t want = 0;
    if (room.size() > kLimeHeaderSize) {
      const uint64_t avail = room.size() - kLimeHeaderSize;
      const uint64_t end = avail >= left ? cur + left : (cur + avail) & ~(page - 1);
      want = end > cur ? end - cur : 0;
    }
    const bool direct = want > 0;
    uint8_t* data = room.data() + kLimeHeaderSize;
    if (!direct) {  // the chunk's last bytes: too few for a header and a page
      MLFX_TRY(w.commit(0));
      bounce.resize(page);
      data = bounce.data();
      want = std::min<uint64_t>(left, page - cur % page);
    }
    const ssize_t n = read_(data, static_cast<size_t>(want), cur);
    if (n > 0) {
      uint8_t header[kLimeHeaderSize];
      encode_lime_header(header, cur, cur + static_cast<uint64_t>(n) - 1);
      if (direct) {
        std::memcpy(room.data(), header, kLimeHeaderSize);
        MLFX_TRY(w.commit(kLimeHeaderSize + static_cast<size_t>(n)));
      } else {
        MLFX_TRY(w.write(ByteView(header, kLimeHeaderSize)));
        MLFX_TRY(w.write(ByteView(data, static_cast<size_t>(n))));
      }
      written_.push_back({cur, cur + static_cast<uint64_t>(n) - 1});
      bytes_ += static_cast<uint64_t>(n);
      if (progress) progress->advance(static_cast<uint64_t>(n));
      cur += static_cast<uint64_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : 0;
    if (direct) MLFX_TRY(w.commit(0));
    if (err == EINTR) continue;
    if (n < 0 && kmod_page_reason(err).empty())
      return fail(Errc::kIo, "reading physical address " + hex_address(cur) + ": " + process::errno_name(err));
    // This page cannot be read: it splits the range, and the context says why.
    const uint64_t page_end = std::min(ram.end, (cur | (page - 1)));
    note_unreadable(cur, page_end, err);
    if (progress) progress->advance(page_end - cur + 1);
    if (page_end == ram.end) break;
    cur = page_end + 1;
  }
  return {};
}

Status KmodSource::read_image(bundle::BundleWriter& w, Progress* progress) {
  const int fd = device_.fd();
  LimeImageWriter image(
      kernel_.page_size,
      [fd](uint8_t* buf, size_t n, uint64_t address) { return ::pread(fd, buf, n, static_cast<off_t>(address)); },
      options_.cancel);
  const std::vector<PhysRange> ram = kmod_ram(tree_);
  for (const PhysRange& r : ram)
    if (auto st = image.read_range(w, r, progress); !st)
      return fail(std::move(st).error().context("reading " + device_path_));
  count_image(image.written().size() * kLimeHeaderSize + image.data_bytes(), image.data_bytes(),
              image.written().size());
  image_ranges_.clear();
  for (const PhysRange& x : image.written()) {
    if (!image_ranges_.empty() && x.start == image_ranges_.back().end + 1) image_ranges_.back().end = x.end;
    else image_ranges_.push_back(x);
  }
  unreadable_ = image.unreadable();
  // RAM that /proc/iomem shows but the module did not list (it should list all of it).
  for (const PhysRange& gap : subtract(all_system_ram(iomem_), ram))
    unreadable_.push_back({gap, "System RAM in /proc/iomem that mlfx_mem did not list"});
  std::sort(unreadable_.begin(), unreadable_.end(),
            [](const MissingRange& a, const MissingRange& b) { return a.range.start < b.range.start; });
  footprint_["sysfs"] = module_sysfs_facts(module_.name);
  return {};
}

Status KmodSource::release_module() {
  if (device_.is_open()) (void)device_.close();
  if (!loaded_) return {};
  loaded_ = false;
  return unload_module(module_.name);
}

json::Json KmodSource::source_context() const {
  json::Json tree = json::Json::array();
  for (const KmodRange& r : tree_)
    tree.push_back({{"start", r.range.start}, {"end", r.range.end}, {"depth", r.depth}, {"flags", r.flags}, {"name", r.name}});
  return {{"module", {{"footprint", footprint_}, {"info", info_}, {"device", device_path_}, {"iomem", std::move(tree)}}}};
}

}  // namespace mlfx::agent::physical
