// gdb's sysroot for process cores: gcore and kernel cores (default coredump_filter) leave out
// file-backed mappings that were never written, such as .text and .rodata, where static type
// objects keep their tp_name. This layer reads those bytes from SYSROOT + the mapped path at
// the mapping's file offset (NT_FILE), on top of an ElfCoreLayer. The core always wins: only
// addresses the core declares no data for are filled, and only a file whose GNU build-id
// equals the one the core holds for it is read: an NT_FILE entry may name any lab-side path, so
// a file the core gives no build-id to check against is refused too.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"

namespace mlfx::layers {

// One NT_FILE range (or part of one) whose bytes the core does not declare.
struct FileGap {
  uint64_t start = 0, size = 0;
  uint64_t file_offset = 0;  // of `start`, in bytes
  size_t file = 0;           // index into CoreInfo::files of the entry it belongs to
};

// File-backed memory the core leaves out: the ranges the sysroot could fill. Entries that are
// impossible (wrapping, overlapping, unsafe paths) are skipped and named in `warnings`.
struct MissingFileData {
  std::vector<FileGap> gaps;  // sorted by start, disjoint
  uint64_t bytes = 0;
  std::vector<std::string> paths;  // distinct, in order of first gap
  std::vector<std::string> warnings;
};
MissingFileData missing_file_data(const ElfCoreLayer& core);

// What the sysroot did with one mapped file.
struct SysrootFile {
  std::string path;       // as mapped in the process (NT_FILE)
  std::string host_path;  // SYSROOT + path
  bool attached = false;  // fills gaps in the core
  bool verified = false;  // its GNU build-id equals the one in the core
  bool refused = false;   // not read: build-id differs, absent from the core or the file, or not ELF
  std::string build_id;   // the sysroot file's, hex; empty when it has none
  uint64_t bytes = 0;     // bytes of the process it provides (0 when not attached)
  std::string detail;     // why refused or not attached
};

class SysrootLayer : public Layer {
 public:
  // `sysroot` is a directory ("/" on the captured host). Missing, unreadable or mismatching
  // files are reported in files(), not errors; only a sysroot that is not a directory is.
  static Result<std::unique_ptr<SysrootLayer>> open(std::shared_ptr<const ElfCoreLayer> core,
                                                    const std::string& sysroot);

  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override;
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override;
  // The core's bytes only: what a sysroot file fills in is read through view(), which records it.
  std::optional<FilePlace> file_place(uint64_t addr, uint64_t len) const override;

  const std::string& sysroot() const { return sysroot_; }
  // Every distinct mapped path with a gap, attached or not, in order of first gap.
  const std::vector<SysrootFile>& files() const { return files_; }
  // Whether any byte of files()[i] has been read through view() (and so through read()).
  bool was_read(size_t i) const { return i < used_.size() && used_[i]; }
  // Skipped NT_FILE entries and similar (from missing_file_data).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  struct Fill {
    uint64_t start = 0, size = 0, file_offset = 0;
    size_t file = 0;  // index into files_
  };
  SysrootLayer() = default;
  const Fill* find(uint64_t addr) const;

  std::string name_, sysroot_;
  std::shared_ptr<const ElfCoreLayer> core_;
  std::vector<SysrootFile> files_;
  std::vector<std::shared_ptr<const FileLayer>> mapped_;  // parallel to files_; null if not attached
  std::vector<Fill> fills_;                              // sorted by start, disjoint
  std::vector<std::string> warnings_;
  mutable std::vector<uint8_t> used_;  // parallel to files_; not thread-safe, like the caches
};

}  // namespace mlfx::layers
