// `mlfx-agent capture --source kmod`: our own module, mlfx_mem.ko (kmod/mlfx_mem_uapi.h), hands
// physical RAM to the agent read-only through /dev/mlfx_mem, read at the agent's own pace.
//
// The module is loaded before the targets are frozen; its iomem tree (nested System RAM
// included) says what to read. Each RAM range is read with pread straight into the bundle's
// chunk buffers, a LiME range header in front of each piece: a piece ends where a chunk ends
// (so ranges of about the chunk size follow each other) or at a page the module cannot read.
// Such a page is never replaced by zeros: it splits the range and is listed, with the reason
// the module gave (its errno), in the context's `unreadable`. The module's footprint (its own
// text and data, what it allocated) goes into the context; the device is closed and the module
// unloaded as soon as the image is read, and on every failure.
#pragma once

#include <atomic>
#include <functional>
#include <memory>

#include "capture/physical/physical_source.h"
#include "mlfx/base/file.h"

namespace mlfx::agent::physical {

inline constexpr char kKmodModuleFile[] = "mlfx_mem.ko";
inline constexpr char kKmodDevice[] = "/dev/mlfx_mem";

// A range of the module's iomem tree (struct mlfx_mem_range, checked).
struct KmodRange {
  PhysRange range;
  uint32_t depth = 0, flags = 0;
  std::string name;
};

// The readable-RAM ranges of the module's tree, sorted and merged.
std::vector<PhysRange> kmod_ram(const std::vector<KmodRange>& tree);

// What an errno from pread on /dev/mlfx_mem means (the uapi's list); empty for an errno the
// module does not document (a failure of the capture, not of one page).
std::string kmod_page_reason(int err);

// Reads physical memory into a LiME image: `read` is pread on the device (bytes at a physical
// address; a count, or -1 with errno). Each piece is a range header and its bytes, read straight
// into the bundle's chunk buffers; pieces end on page boundaries (or the range's end) and where
// a page cannot be read. Such a page splits the range and is listed with its reason.
class LimeImageWriter {
 public:
  using Reader = std::function<ssize_t(uint8_t* buf, size_t n, uint64_t address)>;
  LimeImageWriter(uint64_t page_size, Reader read, const std::atomic<bool>* cancel)
      : page_(page_size), read_(std::move(read)), cancel_(cancel) {}

  Status read_range(bundle::BundleWriter& w, PhysRange ram, Progress* progress);

  const std::vector<PhysRange>& written() const { return written_; }  // one per header, in order
  const std::vector<MissingRange>& unreadable() const { return unreadable_; }
  uint64_t data_bytes() const { return bytes_; }

 private:
  void note_unreadable(uint64_t start, uint64_t end, int err);

  uint64_t page_;
  Reader read_;
  const std::atomic<bool>* cancel_;
  std::vector<PhysRange> written_;
  std::vector<MissingRange> unreadable_;
  uint64_t bytes_ = 0;
  Bytes bounce_;
};

class KmodSource final : public PhysicalSource {
 public:
  static Result<std::unique_ptr<KmodSource>> create(PhysicalOptions options);
  ~KmodSource() override;

  std::string name() const override { return "kmod"; }

 protected:
  Status before_freeze() override;
  Status read_image(bundle::BundleWriter& bundle, Progress* progress) override;
  Status release_module() override;
  std::string memory_stream_source() const override { return "mlfx_mem:" + std::string(kKmodDevice); }
  json::Json module_parameters() const override { return ""; }
  json::Json source_context() const override;
  std::string method() const override;

 private:
  explicit KmodSource(PhysicalOptions options) : PhysicalSource(std::move(options)) {}
  Status open_device();
  Status read_info_and_ranges();

  bool loaded_ = false;
  File device_;
  std::string device_path_;
  std::string private_node_dir_;  // when /dev has no node: a node of our own, removed after use
  std::vector<KmodRange> tree_;
  json::Json info_ = json::Json::object();
  json::Json footprint_ = json::Json::object();
};

}  // namespace mlfx::agent::physical
