#include "elf_build_id.h"

#include <elf.h>
#include <sys/stat.h>

#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "procfs.h"

namespace mlfx::agent::process {
namespace {

constexpr size_t kMaxPhnum = 4096;
constexpr uint64_t kMaxNoteSegment = 1u << 20;

bool native_elf(const unsigned char* ident) {
  constexpr unsigned char kData = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB;
  return std::memcmp(ident, ELFMAG, SELFMAG) == 0 && ident[EI_DATA] == kData;
}

// Walks the notes of one PT_NOTE segment (entries aligned to 4 or 8 bytes, as the segment says).
std::optional<std::string> find_build_id(const std::vector<uint8_t>& notes, uint64_t align) {
  const size_t a = align == 8 ? 8 : 4;
  auto up = [a](size_t v) { return (v + a - 1) / a * a; };
  size_t pos = 0;
  while (pos + sizeof(Elf64_Nhdr) <= notes.size()) {
    Elf64_Nhdr nh;  // the same layout as Elf32_Nhdr
    std::memcpy(&nh, notes.data() + pos, sizeof nh);
    size_t name_at = pos + sizeof nh;
    size_t desc_at = name_at + up(nh.n_namesz);
    size_t next = desc_at + up(nh.n_descsz);
    if (nh.n_namesz > notes.size() || nh.n_descsz > notes.size() || next > notes.size()) break;
    if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
        std::memcmp(notes.data() + name_at, "GNU", 4) == 0 && nh.n_descsz > 0) {
      static const char* kHex = "0123456789abcdef";
      std::string hex;
      for (size_t i = 0; i < nh.n_descsz; ++i) {
        uint8_t b = notes[desc_at + i];
        hex += kHex[b >> 4];
        hex += kHex[b & 15];
      }
      return hex;
    }
    pos = next;
  }
  return std::nullopt;
}

// ELF32 and ELF64 differ only in field widths; this reads either into 64-bit fields.
struct Phdr {
  uint32_t type;
  uint64_t offset, filesz, align;
};

}  // namespace

Result<std::optional<std::string>> read_gnu_build_id(const File& f) {
  MLFX_ASSIGN(uint64_t size, f.size());
  if (size < sizeof(Elf64_Ehdr)) return std::optional<std::string>();
  Elf64_Ehdr eh;
  MLFX_TRY(f.pread_exact(0, reinterpret_cast<uint8_t*>(&eh), sizeof eh));
  if (!native_elf(eh.e_ident)) return std::optional<std::string>();
  const bool is64 = eh.e_ident[EI_CLASS] == ELFCLASS64;
  if (!is64 && eh.e_ident[EI_CLASS] != ELFCLASS32) return std::optional<std::string>();
  uint64_t phoff, phnum, phentsize;
  if (is64) {
    phoff = eh.e_phoff, phnum = eh.e_phnum, phentsize = eh.e_phentsize;
  } else {
    Elf32_Ehdr e32;
    std::memcpy(&e32, &eh, sizeof e32);
    phoff = e32.e_phoff, phnum = e32.e_phnum, phentsize = e32.e_phentsize;
  }
  const size_t want = is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr);
  if (phnum == 0 || phnum > kMaxPhnum || phentsize < want || phoff > size ||
      phnum * phentsize > size - phoff)
    return std::optional<std::string>();
  std::vector<uint8_t> table(phnum * phentsize);
  MLFX_TRY(f.pread_exact(phoff, table.data(), table.size()));
  for (uint64_t i = 0; i < phnum; ++i) {
    const uint8_t* p = table.data() + i * phentsize;
    Phdr ph;
    if (is64) {
      Elf64_Phdr h;
      std::memcpy(&h, p, sizeof h);
      ph = {h.p_type, h.p_offset, h.p_filesz, h.p_align};
    } else {
      Elf32_Phdr h;
      std::memcpy(&h, p, sizeof h);
      ph = {h.p_type, h.p_offset, h.p_filesz, h.p_align};
    }
    if (ph.type != PT_NOTE || ph.filesz == 0 || ph.filesz > kMaxNoteSegment || ph.offset > size ||
        ph.filesz > size - ph.offset)
      continue;
    std::vector<uint8_t> notes(ph.filesz);
    MLFX_TRY(f.pread_exact(ph.offset, notes.data(), notes.size()));
    if (auto id = find_build_id(notes, ph.align)) return id;
  }
  return std::optional<std::string>();
}

bool stat_mapped_file(pid_t pid, const MapEntry& m, struct stat& st) {
  return stat(proc_path(pid, "map_files/" + m.range_name()).c_str(), &st) == 0 ||
         stat((proc_path(pid, "root") + m.path).c_str(), &st) == 0;
}

Result<File> open_mapped_file(pid_t pid, const MapEntry& m) {
  if (auto f = File::open_read(proc_path(pid, "map_files/" + m.range_name()))) return f;
  return File::open_read(proc_path(pid, "root") + m.path);
}

std::vector<std::optional<std::string>> mapped_build_ids(pid_t pid, const std::vector<MapEntry>& maps) {
  std::map<std::tuple<uint32_t, uint32_t, uint64_t, std::string>, std::optional<std::string>> ids;
  std::vector<std::optional<std::string>> out(maps.size());
  for (size_t i = 0; i < maps.size(); ++i) {
    const MapEntry& e = maps[i];
    if (!e.file_backed()) continue;
    auto key = std::make_tuple(e.dev_major, e.dev_minor, e.inode, e.path);
    auto it = ids.find(key);
    if (it == ids.end()) {
      std::optional<std::string> id;
      // Regular files only: opening a device node would run its driver.
      struct stat st;
      if (stat_mapped_file(pid, e, st) && S_ISREG(st.st_mode))
        if (auto f = open_mapped_file(pid, e))
          if (auto r = read_gnu_build_id(*f)) id = *r;
      it = ids.emplace(key, std::move(id)).first;
    }
    out[i] = it->second;
  }
  return out;
}

}  // namespace mlfx::agent::process
