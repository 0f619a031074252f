// Small ELF cores and ELF objects for the layer tests: PT_LOADs with given bytes and flags, an
// NT_FILE note (built from entries, or raw), and ELF files with a GNU build-id note.
#pragma once

#include <elf.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace mlfx::testing {

// Bytes that differ at every offset, so that a read from the wrong offset shows.
inline std::string pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + (i >> 8) * 7 + seed) & 0xff);
  return s;
}

// An ELF shared object of `size` bytes: header, a PT_NOTE with the GNU build-id `id` (none
// when empty) and a PT_LOAD over the whole file; the rest is pattern(size, seed).
inline std::string elf_object(const std::string& id, size_t size, uint8_t seed) {
  std::string out = pattern(size, seed);
  std::string note;
  if (!id.empty()) {
    auto u32 = [&](uint32_t v) { note.append(reinterpret_cast<const char*>(&v), 4); };
    u32(4), u32(uint32_t(id.size())), u32(NT_GNU_BUILD_ID);
    note.append("GNU\0", 4);
    note.append(id);
    note.append((4 - id.size() % 4) % 4, '\0');
  }
  Elf64_Ehdr e{};
  std::memcpy(e.e_ident, ELFMAG, SELFMAG);
  e.e_ident[EI_CLASS] = ELFCLASS64, e.e_ident[EI_DATA] = ELFDATA2LSB, e.e_ident[EI_VERSION] = EV_CURRENT;
  e.e_type = ET_DYN, e.e_machine = EM_X86_64, e.e_version = EV_CURRENT;
  e.e_phoff = sizeof e, e.e_phentsize = sizeof(Elf64_Phdr), e.e_phnum = 2, e.e_ehsize = sizeof e;
  Elf64_Phdr p[2]{};
  const size_t note_off = sizeof e + sizeof p;
  p[0].p_type = PT_LOAD, p[0].p_flags = PF_R, p[0].p_filesz = p[0].p_memsz = size, p[0].p_align = 0x1000;
  p[1].p_type = PT_NOTE, p[1].p_flags = PF_R, p[1].p_offset = p[1].p_vaddr = note_off;
  p[1].p_filesz = p[1].p_memsz = note.size(), p[1].p_align = 4;
  std::memcpy(&out[0], &e, sizeof e);
  std::memcpy(&out[sizeof e], p, sizeof p);
  std::memcpy(&out[note_off], note.data(), note.size());
  return out;
}

struct CoreBuilder {
  struct Load {
    uint64_t vaddr = 0;
    std::string data;  // p_filesz bytes
    uint64_t memsz = 0;
    uint32_t flags = PF_R;
  };
  struct Mapping {
    uint64_t start = 0, end = 0, pgoff = 0;
    std::string path;
  };
  std::vector<Load> loads;
  std::vector<Mapping> files;
  uint64_t page = 4096;
  std::string raw_nt_file;  // replaces the note built from `files` when not empty

  std::string nt_file() const {
    if (!raw_nt_file.empty()) return raw_nt_file;
    std::string d;
    auto u64 = [&](uint64_t v) { d.append(reinterpret_cast<const char*>(&v), 8); };
    u64(files.size()), u64(page);
    for (const auto& f : files) u64(f.start), u64(f.end), u64(f.pgoff);
    for (const auto& f : files) d.append(f.path), d.push_back('\0');
    return d;
  }

  std::string build() const {
    std::string notes;
    auto note = [&](uint32_t type, const std::string& desc) {
      auto u32 = [&](uint32_t v) { notes.append(reinterpret_cast<const char*>(&v), 4); };
      u32(5), u32(uint32_t(desc.size())), u32(type);
      notes.append("CORE\0\0\0\0", 8);
      notes.append(desc);
      notes.append((4 - desc.size() % 4) % 4, '\0');
    };
    note(0x46494c45, nt_file());
    const size_t nph = 1 + loads.size();
    size_t off = sizeof(Elf64_Ehdr) + nph * sizeof(Elf64_Phdr);
    std::vector<Elf64_Phdr> ph(nph);
    ph[0].p_type = PT_NOTE, ph[0].p_offset = off, ph[0].p_filesz = notes.size();
    off += notes.size();
    for (size_t i = 0; i < loads.size(); ++i) {
      Elf64_Phdr& p = ph[i + 1];
      p.p_type = PT_LOAD, p.p_flags = loads[i].flags, p.p_offset = off, p.p_vaddr = loads[i].vaddr;
      p.p_filesz = loads[i].data.size(), p.p_memsz = loads[i].memsz ? loads[i].memsz : loads[i].data.size();
      p.p_align = 1;
      off += loads[i].data.size();
    }
    Elf64_Ehdr e{};
    std::memcpy(e.e_ident, ELFMAG, SELFMAG);
    e.e_ident[EI_CLASS] = ELFCLASS64, e.e_ident[EI_DATA] = ELFDATA2LSB, e.e_ident[EI_VERSION] = EV_CURRENT;
    e.e_type = ET_CORE, e.e_machine = EM_X86_64, e.e_version = EV_CURRENT;
    e.e_phoff = sizeof e, e.e_phentsize = sizeof(Elf64_Phdr), e.e_phnum = uint16_t(nph), e.e_ehsize = sizeof e;
    std::string out(reinterpret_cast<const char*>(&e), sizeof e);
    out.append(reinterpret_cast<const char*>(ph.data()), nph * sizeof(Elf64_Phdr));
    out += notes;
    for (const auto& l : loads) out += l.data;
    return out;
  }
};

}  // namespace mlfx::testing
