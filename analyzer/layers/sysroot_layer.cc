#include "layers/sysroot_layer.h"

#include <elf.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <unordered_map>

#include "mlfx/base/file.h"

namespace mlfx::layers {

namespace {

constexpr size_t kMaxFiles = 4096;        // distinct files opened from one sysroot
constexpr size_t kMaxPath = 4096;         // PATH_MAX
constexpr size_t kMaxDetailWarnings = 16;  // per kind of skipped entry, then a count
constexpr uint64_t kMaxPhdrs = 4096;
constexpr uint64_t kMaxNoteBytes = 1u << 20;
constexpr std::string_view kDeleted = " (deleted)";  // the kernel's suffix for unlinked files


// Why a mapped path must not be joined to a sysroot, or empty when it may.
std::string unsafe_path(const std::string& path) {
  if (path.empty() || path[0] != '/') return "is not absolute";
  if (path.size() > kMaxPath) return "is too long";
  if (path.size() >= kDeleted.size() && path.compare(path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0)
    return "was deleted before the capture";
  // ".." would leave the sysroot.
  for (size_t at = 0; at != std::string::npos; at = path.find('/', at + 1))
    if (path.compare(at, 4, "/../") == 0 || path.compare(at, std::string::npos, "/..") == 0) return "contains '..'";
  return {};
}

// Counts skipped mappings per reason; details for the first few only (hostile evidence may
// list a million).
class SkipLog {
 public:
  explicit SkipLog(std::vector<std::string>& out) : out_(out) {}
  void skip(const std::string& reason, const std::string& detail) {
    if (++counts_[reason] <= kMaxDetailWarnings) out_.push_back("file mapping " + detail + " skipped: " + reason);
  }
  ~SkipLog() {
    for (const auto& [reason, n] : counts_)
      if (n > kMaxDetailWarnings)
        out_.push_back(std::to_string(n - kMaxDetailWarnings) + " more file mappings skipped: " + reason);
  }

 private:
  std::vector<std::string>& out_;
  std::unordered_map<std::string, size_t> counts_;
};

struct ElfIdentity {
  bool elf = false;  // starts with an ELF header
  std::optional<Bytes> build_id;
};

// The GNU build-id of the ELF object whose file offset 0 is at `base`, from its PT_NOTE
// segments, reading no further than `limit` bytes past `base`.
ElfIdentity elf_identity(const Layer& mem, uint64_t base, uint64_t limit) {
  ElfIdentity id;
  limit = std::min(limit, UINT64_MAX - base);
  Elf64_Ehdr eh;
  if (limit < sizeof eh || !mem.read(base, &eh, sizeof eh)) return id;
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return id;
  id.elf = true;
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > kMaxPhdrs ||
      eh.e_phoff > limit || uint64_t(eh.e_phnum) * sizeof(Elf64_Phdr) > limit - eh.e_phoff)
    return id;
  std::vector<Elf64_Phdr> ph(eh.e_phnum);
  if (!mem.read(base + eh.e_phoff, ph.data(), ph.size() * sizeof(Elf64_Phdr))) return id;
  for (const Elf64_Phdr& p : ph) {
    if (p.p_type != PT_NOTE || p.p_filesz > kMaxNoteBytes || p.p_offset > limit || p.p_filesz > limit - p.p_offset)
      continue;
    Bytes notes(p.p_filesz);
    if (!mem.read(base + p.p_offset, notes.data(), notes.size())) continue;
    const uint64_t align = p.p_align == 8 ? 8 : 4;
    auto up = [&](uint64_t v) { return (v + align - 1) & ~(align - 1); };
    for (uint64_t off = 0; off + 12 <= notes.size();) {
      const uint64_t namesz = load_le<uint32_t>(&notes[off]), descsz = load_le<uint32_t>(&notes[off + 4]);
      const uint32_t type = load_le<uint32_t>(&notes[off + 8]);
      const uint64_t name_at = off + 12, desc_at = name_at + up(namesz), next = desc_at + up(descsz);
      if (desc_at > notes.size() || descsz > notes.size() - desc_at) break;
      if (type == NT_GNU_BUILD_ID && namesz == 4 && std::memcmp(&notes[name_at], "GNU", 4) == 0 && descsz > 0 &&
          descsz <= 64) {
        id.build_id = Bytes(notes.begin() + desc_at, notes.begin() + desc_at + descsz);
        return id;
      }
      off = next;
    }
  }
  return id;
}

}  // namespace

MissingFileData missing_file_data(const ProcessImage& image) {
  MissingFileData out;
  const std::vector<MappedFile>& files = image.mapped_files;
  const std::vector<AddressRange>& blocked = image.declared;
  std::vector<size_t> order(files.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return files[a].start < files[b].start; });
  std::unordered_map<std::string, size_t> seen;
  SkipLog skipped(out.warnings);
  uint64_t covered = 0;  // entries may not overlap: the first one claims an address
  for (size_t i : order) {
    const MappedFile& f = files[i];
    const std::string where = hex_address(f.start) + "-" + hex_address(f.end) + " " + f.path;
    if (f.end <= f.start) {
      skipped.skip("its range is empty or reversed", where);
      continue;
    }
    if (f.file_offset > UINT64_MAX - (f.end - f.start)) {
      skipped.skip("its file offset overflows", where);
      continue;
    }
    if (std::string why = unsafe_path(f.path); !why.empty()) {
      skipped.skip("the path " + why, where);
      continue;
    }
    if (f.end <= covered) {
      skipped.skip("it overlaps an earlier entry", where);
      continue;
    }
    uint64_t from = std::max(f.start, covered);
    covered = f.end;
    // Subtract the blocked ranges from [from, f.end).
    auto it = std::upper_bound(blocked.begin(), blocked.end(), from,
                               [](uint64_t a, const AddressRange& b) { return a < b.end; });
    while (from < f.end) {
      uint64_t to = f.end;
      if (it != blocked.end() && it->start <= from) {
        from = std::min(f.end, it->end);
        ++it;
        continue;
      }
      if (it != blocked.end()) to = std::min(to, it->start);
      out.gaps.push_back({from, to - from, f.file_offset + (from - f.start), i});
      out.bytes += to - from;
      if (seen.emplace(f.path, out.paths.size()).second) out.paths.push_back(f.path);
      from = to;
    }
  }
  return out;
}

namespace {

// The build-id the evidence holds for `path`: from its own copy of the file's ELF header (the
// mapping at file offset 0), else the one the agent recorded at acquisition.
struct WantedIdentity {
  ElfIdentity id;
  std::string by;     // "ELF header in the evidence", "recorded at acquisition"; empty: none
  std::string error;  // both exist and differ
};
WantedIdentity wanted_identity(const ProcessImage& image, const MappedFile* header, const std::string& path) {
  WantedIdentity w;
  if (header && image.memory->is_mapped(header->start, sizeof(Elf64_Ehdr))) {
    w.id = elf_identity(*image.memory, header->start, header->end - header->start);
    w.by = "ELF header in the evidence";
  }
  auto recorded = image.build_ids.find(path);
  if (recorded == image.build_ids.end()) return w;
  if (w.by.empty()) {
    w.id = {true, from_hex(recorded->second)};
    w.by = "recorded at acquisition";
  } else if (w.id.build_id && to_hex(*w.id.build_id) != recorded->second) {
    w.error = "refused: the evidence's copy of its ELF header has build-id " + to_hex(*w.id.build_id) +
              " but " + recorded->second + " was recorded at acquisition";
  }
  return w;
}

}  // namespace

Result<std::unique_ptr<SysrootLayer>> SysrootLayer::open(const ProcessImage& image, const std::string& sysroot) {
  struct stat st;
  if (stat(sysroot.c_str(), &st) != 0)
    return fail(Errc::kNotFound, "sysroot " + sysroot + ": " + errno_text(errno));
  if (!S_ISDIR(st.st_mode)) return fail(Errc::kInvalidArgument, "sysroot " + sysroot + " is not a directory");
  std::string prefix = sysroot;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();  // "/" joins as ""

  std::unique_ptr<SysrootLayer> layer(new SysrootLayer);
  layer->sysroot_ = sysroot;
  layer->name_ = image.memory->name() + " + sysroot " + sysroot;
  MissingFileData missing = missing_file_data(image);
  layer->warnings_ = std::move(missing.warnings);

  // The evidence's own view of each file's first page: the mapping at file offset 0.
  std::unordered_map<std::string, const MappedFile*> header;
  for (const MappedFile& f : image.mapped_files)
    if (f.file_offset == 0 && f.end > f.start) {
      auto [it, fresh] = header.emplace(f.path, &f);
      if (!fresh && f.start < it->second->start) it->second = &f;
    }

  std::unordered_map<std::string, size_t> index;
  for (const std::string& path : missing.paths) {
    if (layer->files_.size() == kMaxFiles) {
      layer->warnings_.push_back("sysroot: more than " + std::to_string(kMaxFiles) +
                                 " mapped files lack data; the rest are not read");
      break;
    }
    index[path] = layer->files_.size();
    SysrootFile& f = layer->files_.emplace_back();
    std::shared_ptr<const FileLayer>& mapped = layer->mapped_.emplace_back();
    f.path = path;
    f.host_path = prefix + path;
    struct stat fst;
    if (stat(f.host_path.c_str(), &fst) != 0) {
      f.detail = "not in the sysroot (" + errno_text(errno) + ")";
      continue;
    }
    if (!S_ISREG(fst.st_mode)) {  // devices, FIFOs: never open them
      f.detail = "not a regular file";
      continue;
    }
    auto file = FileLayer::open(f.host_path);
    if (!file) {
      f.detail = file.error().to_string();
      continue;
    }
    const ElfIdentity have = elf_identity(**file, 0, (*file)->size());
    if (have.build_id) f.build_id = to_hex(*have.build_id);
    // Only the very build the process mapped is read: a file is attached when its GNU build-id
    // equals the one the evidence holds for it. Anything else (a mapped path may name any
    // lab-side file) is refused with the reason.
    auto h = header.find(path);
    const WantedIdentity w = wanted_identity(image, h == header.end() ? nullptr : h->second, path);
    const ElfIdentity& want = w.id;
    f.refused = true;
    if (!w.error.empty()) {
      f.detail = w.error;
      continue;
    }
    if (w.by.empty()) {
      f.detail = "refused: the evidence holds no copy of its first page and no build-id recorded at acquisition, "
                 "so its build-id cannot be checked";
      continue;
    }
    if (want.elf && !have.elf) {
      f.detail = "refused: the evidence maps an ELF object here but this file is not one";
      continue;
    }
    if (!want.build_id) {
      f.detail = want.elf ? "refused: the evidence holds its ELF header but no build-id note to check this file against"
                          : "refused: not an ELF object in the evidence, nothing to check this file against";
      continue;
    }
    if (!have.build_id || *have.build_id != *want.build_id) {
      f.detail = "refused: build-id " + (have.build_id ? f.build_id : std::string("(none)")) +
                 " differs from the evidence's " + to_hex(*want.build_id) + " (" + w.by +
                 "; a different build of this file)";
      continue;
    }
    f.refused = false;
    f.verified = true;
    f.verified_by = w.by;
    f.attached = true;
    mapped = std::move(*file);
  }

  for (const FileGap& g : missing.gaps) {
    auto it = index.find(image.mapped_files[g.file].path);
    if (it == index.end() || !layer->files_[it->second].attached) continue;
    // Past the end of the file the process would fault (or read the zeroed rest of a page).
    const uint64_t size = layer->mapped_[it->second]->size();
    if (g.file_offset >= size) continue;
    const uint64_t n = std::min(g.size, size - g.file_offset);
    layer->fills_.push_back({g.start, n, g.file_offset, it->second});
    layer->files_[it->second].bytes += n;
  }
  layer->used_.assign(layer->files_.size(), 0);
  layer->evidence_ = image.memory;
  return layer;
}

const SysrootLayer::Fill* SysrootLayer::find(uint64_t addr) const {
  auto it = std::upper_bound(fills_.begin(), fills_.end(), addr,
                             [](uint64_t a, const Fill& f) { return a < f.start; });
  if (it == fills_.begin()) return nullptr;
  --it;
  return addr - it->start < it->size ? &*it : nullptr;
}

const uint8_t* SysrootLayer::view(uint64_t addr, uint64_t len) const {
  if (evidence_->mapped_run(addr, 1)) return evidence_->view(addr, len);
  const Fill* f = find(addr);
  if (!f || len > f->size - (addr - f->start)) return nullptr;
  const uint8_t* p = mapped_[f->file]->view(f->file_offset + (addr - f->start), len);
  if (p) used_[f->file] = 1;
  return p;
}

std::optional<FilePlace> SysrootLayer::file_place(uint64_t addr, uint64_t len) const {
  if (evidence_->mapped_run(addr, 1)) return evidence_->file_place(addr, len);
  return std::nullopt;
}

uint64_t SysrootLayer::mapped_run(uint64_t addr, uint64_t max) const {
  if (uint64_t run = evidence_->mapped_run(addr, max)) return run;
  const Fill* f = find(addr);
  return f ? std::min(max, f->size - (addr - f->start)) : 0;
}

}  // namespace mlfx::layers
