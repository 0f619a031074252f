// A small ELF core reader for the tests, written from the ELF specification with raw offsets
// (not <elf.h> structs and not the agent's code), so the agent's writer is checked against an
// independent reading of the format.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace mlfx::testing {

struct CoreNoteView {
  std::string name;
  uint32_t type = 0;
  std::string desc;
};

struct CoreLoadView {
  uint32_t flags = 0;
  uint64_t offset = 0, vaddr = 0, filesz = 0, memsz = 0, align = 0;
};

struct ElfCoreView {
  uint16_t type = 0, machine = 0;
  uint64_t phnum = 0;  // after extended numbering
  bool extended_numbering = false;
  uint64_t note_offset = 0, note_size = 0;
  std::vector<CoreNoteView> notes;
  std::vector<CoreLoadView> loads;
  std::string error;  // empty when the file parsed

  // The PT_LOAD holding [addr, addr + len) in its file bytes, if any.
  const CoreLoadView* load_for(uint64_t addr, uint64_t len) const {
    for (const auto& l : loads)
      if (addr >= l.vaddr && addr + len <= l.vaddr + l.filesz) return &l;
    return nullptr;
  }
};

inline uint64_t rd(const std::string& f, uint64_t off, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(static_cast<uint8_t>(f[off + i])) << (8 * i);
  return v;
}

// Parses an ELFCLASS64 little-endian core held in memory.
inline ElfCoreView parse_elf_core(const std::string& f) {
  ElfCoreView v;
  auto bad = [&](const std::string& why) {
    v.error = why;
    return v;
  };
  if (f.size() < 64 || f.compare(0, 4, "\x7f" "ELF") != 0) return bad("no ELF magic");
  if (f[4] != 2 || f[5] != 1 || f[6] != 1) return bad("not ELFCLASS64 LSB version 1");
  v.type = static_cast<uint16_t>(rd(f, 16, 2));
  v.machine = static_cast<uint16_t>(rd(f, 18, 2));
  const uint64_t phoff = rd(f, 32, 8), shoff = rd(f, 40, 8);
  const uint64_t ehsize = rd(f, 52, 2), phentsize = rd(f, 54, 2);
  v.phnum = rd(f, 56, 2);
  if (ehsize != 64 || phentsize != 56) return bad("unexpected header sizes");
  if (v.phnum == 0xffff) {  // PN_XNUM: the count is in section header 0's sh_info
    v.extended_numbering = true;
    if (rd(f, 60, 2) != 1 || shoff == 0 || shoff + 64 > f.size()) return bad("PN_XNUM without section 0");
    v.phnum = rd(f, shoff + 44, 4);
  }
  if (phoff + v.phnum * 56 > f.size()) return bad("program headers past the end");
  for (uint64_t i = 0; i < v.phnum; ++i) {
    const uint64_t p = phoff + i * 56;
    const uint32_t type = static_cast<uint32_t>(rd(f, p, 4));
    CoreLoadView l{static_cast<uint32_t>(rd(f, p + 4, 4)), rd(f, p + 8, 8), rd(f, p + 16, 8),
                   rd(f, p + 32, 8), rd(f, p + 40, 8), rd(f, p + 48, 8)};
    if (l.offset + l.filesz > f.size()) return bad("segment " + std::to_string(i) + " past the end");
    if (type == 4) {  // PT_NOTE
      v.note_offset = l.offset;
      v.note_size = l.filesz;
    } else if (type == 1) {
      v.loads.push_back(l);
    }
  }
  auto up4 = [](uint64_t x) { return (x + 3) & ~uint64_t{3}; };
  uint64_t pos = v.note_offset;
  const uint64_t end = v.note_offset + v.note_size;
  while (pos < end) {
    if (pos + 12 > end) return bad("truncated note header");
    const uint64_t namesz = rd(f, pos, 4), descsz = rd(f, pos + 4, 4);
    CoreNoteView n;
    n.type = static_cast<uint32_t>(rd(f, pos + 8, 4));
    const uint64_t name_at = pos + 12, desc_at = name_at + up4(namesz);
    if (desc_at + up4(descsz) > end) return bad("truncated note");
    n.name = f.substr(name_at, namesz ? namesz - 1 : 0);
    n.desc = f.substr(desc_at, descsz);
    v.notes.push_back(std::move(n));
    pos = desc_at + up4(descsz);
  }
  return v;
}

}  // namespace mlfx::testing
