// gdb's sysroot for process images: gcore and kernel cores (default coredump_filter) leave out
// file-backed mappings that were never written, such as .text and .rodata, where static type
// objects keep their tp_name; a physical image lacks the file pages the kernel had dropped
// from its page cache. This layer reads those bytes from SYSROOT + the mapped path at the
// mapping's file offset, on top of the evidence's address space (process_image.h). The
// evidence always wins: only addresses it declares nothing for are filled, and only a file
// whose GNU build-id equals the one the evidence holds for it is read (from its copy of the
// file's ELF header, or recorded at acquisition): a mapped path may name any lab-side file, so
// a file the evidence gives no build-id to check against is refused too.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/file_layer.h"
#include "layers/process_image.h"

namespace mlfx::layers {

// One file mapping (or part of one) whose bytes the evidence does not declare.
struct FileGap {
  uint64_t start = 0, size = 0;
  uint64_t file_offset = 0;  // of `start`, in bytes
  size_t file = 0;           // index into ProcessImage::mapped_files of the mapping
};

// File-backed memory the evidence leaves out: the ranges the sysroot could fill. Mappings that
// are impossible (wrapping, overlapping, unsafe paths) are skipped and named in `warnings`.
struct MissingFileData {
  std::vector<FileGap> gaps;  // sorted by start, disjoint
  uint64_t bytes = 0;
  std::vector<std::string> paths;  // distinct, in order of first gap
  std::vector<std::string> warnings;
};
MissingFileData missing_file_data(const ProcessImage& image);

// What the sysroot did with one mapped file.
struct SysrootFile {
  std::string path;       // as mapped in the process
  std::string host_path;  // SYSROOT + path
  bool attached = false;  // fills gaps in the evidence
  bool verified = false;  // its GNU build-id equals the one the evidence holds
  bool refused = false;   // not read: build-id differs, absent from the evidence or the file, or not ELF
  std::string verified_by;  // "ELF header in the evidence" or "recorded at acquisition"
  std::string build_id;   // the sysroot file's, hex; empty when it has none
  uint64_t bytes = 0;     // bytes of the process it provides (0 when not attached)
  std::string detail;     // why refused or not attached
};

class SysrootLayer : public Layer {
 public:
  // `sysroot` is a directory ("/" on the captured host). Missing, unreadable or mismatching
  // files are reported in files(), not errors; only a sysroot that is not a directory is.
  static Result<std::unique_ptr<SysrootLayer>> open(const ProcessImage& image, const std::string& sysroot);

  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override;
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override;
  // The evidence's bytes only: what a sysroot file fills in is read through view(), which records it.
  std::optional<FilePlace> file_place(uint64_t addr, uint64_t len) const override;

  const std::string& sysroot() const { return sysroot_; }
  // Every distinct mapped path with a gap, attached or not, in order of first gap.
  const std::vector<SysrootFile>& files() const { return files_; }
  // Whether any byte of files()[i] has been read through view() (and so through read()).
  bool was_read(size_t i) const { return i < used_.size() && used_[i]; }
  // Skipped mappings and similar (from missing_file_data).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  struct Fill {
    uint64_t start = 0, size = 0, file_offset = 0;
    size_t file = 0;  // index into files_
  };
  SysrootLayer() = default;
  const Fill* find(uint64_t addr) const;

  std::string name_, sysroot_;
  std::shared_ptr<const Layer> evidence_;
  std::vector<SysrootFile> files_;
  std::vector<std::shared_ptr<const FileLayer>> mapped_;  // parallel to files_; null if not attached
  std::vector<Fill> fills_;                              // sorted by start, disjoint
  std::vector<std::string> warnings_;
  mutable std::vector<uint8_t> used_;  // parallel to files_; not thread-safe, like the caches
};

}  // namespace mlfx::layers
