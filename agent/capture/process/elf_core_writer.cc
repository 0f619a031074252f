#include "elf_core_writer.h"

#include <elf.h>

#include <cstring>

namespace mlfx::agent::process {
namespace {

constexpr size_t kReadBlock = 4u << 20;  // one bundle chunk: one pread per chunk

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

template <class T>
void append_struct(Bytes& out, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

void pad_to(Bytes& out, uint64_t size) { out.resize(size, 0); }

}  // namespace

uint64_t core_note_size(const CoreNote& n) {
  return sizeof(Elf64_Nhdr) + align_up(n.name.size() + 1, 4) + align_up(n.desc.size(), 4);
}

Result<ElfCoreLayout> ElfCoreLayout::plan(uint16_t machine, std::vector<CoreNote> notes,
                                          const std::vector<CoreSegment>& segments,
                                          uint64_t page_size) {
  if (page_size == 0 || (page_size & (page_size - 1)) != 0)
    return fail(Errc::kInvalidArgument, "page size " + std::to_string(page_size) + " is not a power of two");
  ElfCoreLayout l;
  l.machine_ = machine;
  l.page_size_ = page_size;
  l.notes_ = std::move(notes);
  const uint64_t phnum = segments.size() + 1;  // + PT_NOTE
  l.extended_numbering_ = phnum >= PN_XNUM;
  uint64_t offset = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
  if (l.extended_numbering_) offset += sizeof(Elf64_Shdr);
  l.note_offset_ = offset;
  for (const auto& n : l.notes_) {
    if (n.desc.size() > UINT32_MAX / 2) return fail(Errc::kInvalidArgument, "core note too large");
    l.note_size_ += core_note_size(n);
  }
  l.data_offset_ = align_up(l.note_offset_ + l.note_size_, page_size);
  offset = l.data_offset_;
  for (const auto& s : segments) {
    if (s.vaddr % page_size != 0 || s.memsz % page_size != 0 || s.memsz == 0 ||
        (s.filesz != 0 && s.filesz != s.memsz) || s.vaddr + s.memsz < s.vaddr)
      return fail(Errc::kInvalidArgument, "segment at " + std::to_string(s.vaddr) +
                                              " is not whole pages of " + std::to_string(page_size) + " bytes");
    PlannedSegment p;
    static_cast<CoreSegment&>(p) = s;
    p.offset = offset;
    offset += s.filesz;
    l.segments_.push_back(p);
  }
  l.file_size_ = offset;
  return l;
}

Bytes ElfCoreLayout::encode_prefix() const {
  Bytes out;
  out.reserve(data_offset_);
  const uint64_t phnum = segments_.size() + 1;

  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_ident[EI_OSABI] = ELFOSABI_NONE;
  eh.e_type = ET_CORE;
  eh.e_machine = machine_;
  eh.e_version = EV_CURRENT;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = extended_numbering_ ? PN_XNUM : static_cast<Elf64_Half>(phnum);
  if (extended_numbering_) {
    eh.e_shoff = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
    eh.e_shentsize = sizeof(Elf64_Shdr);
    eh.e_shnum = 1;
    eh.e_shstrndx = SHN_UNDEF;
  }
  append_struct(out, eh);

  Elf64_Phdr note{};
  note.p_type = PT_NOTE;
  note.p_offset = note_offset_;
  note.p_filesz = note_size_;
  note.p_align = 4;
  append_struct(out, note);
  for (const auto& s : segments_) {
    Elf64_Phdr ph{};
    ph.p_type = PT_LOAD;
    ph.p_flags = s.flags;
    ph.p_offset = s.offset;
    ph.p_vaddr = s.vaddr;
    ph.p_filesz = s.filesz;
    ph.p_memsz = s.memsz;
    ph.p_align = page_size_;
    append_struct(out, ph);
  }
  if (extended_numbering_) {
    Elf64_Shdr sh{};
    sh.sh_info = static_cast<Elf64_Word>(phnum);
    append_struct(out, sh);
  }

  for (const auto& n : notes_) {
    Elf64_Nhdr nh{};
    nh.n_namesz = static_cast<Elf64_Word>(n.name.size() + 1);
    nh.n_descsz = static_cast<Elf64_Word>(n.desc.size());
    nh.n_type = n.type;
    append_struct(out, nh);
    out.insert(out.end(), n.name.begin(), n.name.end());
    pad_to(out, align_up(out.size() + 1, 4));
    out.insert(out.end(), n.desc.begin(), n.desc.end());
    pad_to(out, align_up(out.size(), 4));
  }
  pad_to(out, data_offset_);
  return out;
}

Status ElfCoreLayout::emit(MemoryReader& memory, CoreSink& sink, EmitStats& stats,
                           Progress* progress) const {
  auto put = [&sink](ByteView data) -> Status {
    while (!data.empty()) {
      MLFX_ASSIGN(std::span<uint8_t> room, sink.buffer(data.size()));
      std::memcpy(room.data(), data.data(), room.size());
      MLFX_TRY(sink.commit(room.size()));
      data = data.subspan(room.size());
    }
    return {};
  };
  const Bytes prefix = encode_prefix();
  MLFX_TRY(put(prefix));
  if (progress) progress->advance(prefix.size());
  auto note_unreadable = [&](uint64_t start, uint64_t end, std::string reason) {
    auto& u = stats.unreadable;
    if (!u.empty() && u.back().end == start && u.back().reason == reason) u.back().end = end;
    else u.push_back({start, end, std::move(reason)});
  };
  // Once the memory is gone (the process exited), the rest is zeros without asking again.
  auto zero_rest = [&](uint8_t* p, uint64_t at, size_t len) {
    std::memset(p, 0, len);
    if (!stats.source_gone) {
      stats.source_gone = true;
      stats.gone_at = at;
      stats.gone_reason = memory.gone_reason();
    }
    note_unreadable(at, at + len, "not read: " + stats.gone_reason);
    stats.bytes_zero_filled += len;
    stats.bytes_lost += len;
  };
  for (const auto& s : segments_) {
    uint64_t addr = s.vaddr;
    const uint64_t end = s.vaddr + s.filesz;
    while (addr < end) {
      MLFX_ASSIGN(std::span<uint8_t> buf, sink.buffer(static_cast<size_t>(std::min<uint64_t>(kReadBlock, end - addr))));
      const size_t want = buf.size();
      size_t got = 0;
      // Read as much of the block as possible; a page that fails becomes zeros.
      while (got < want) {
        if (stats.source_gone) {
          zero_rest(buf.data() + got, addr + got, want - got);
          got = want;
          break;
        }
        auto n = memory.read(addr + got, buf.data() + got, want - got);
        if (n && *n > 0) {
          got += *n;
          stats.bytes_read += *n;
          continue;
        }
        if (memory.gone()) {
          zero_rest(buf.data() + got, addr + got, want - got);
          got = want;
          break;
        }
        const uint64_t at = addr + got;
        const size_t fill = static_cast<size_t>(
            std::min<uint64_t>(align_up(at + 1, page_size_) - at, want - got));
        std::memset(buf.data() + got, 0, fill);
        note_unreadable(at, at + fill, n ? "read returned no data" : n.error().message());
        stats.bytes_zero_filled += fill;
        got += fill;
      }
      MLFX_TRY(sink.commit(want));
      if (progress) progress->advance(want);
      addr += want;
    }
  }
  return {};
}

}  // namespace mlfx::agent::process
