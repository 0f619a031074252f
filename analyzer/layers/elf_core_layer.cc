#include "layers/elf_core_layer.h"

#include <elf.h>

#include <cstdio>
#include <cstring>

namespace mlfx::layers {

namespace {

constexpr uint32_t kMaxPhdrs = 1u << 22;
constexpr uint64_t kMaxNotes = 256u << 20;
constexpr uint32_t kNtFile = 0x46494c45;  // "FILE"
constexpr uint64_t kMaxMappedFiles = 1u << 20;  // Linux caps a process at 65530 mappings

// NT_FILE: count, page size, count x {start, end, page offset}, then count NUL-terminated names.
// Entries whose range is reversed or whose byte offset overflows are dropped, not trusted.
Status parse_nt_file(ByteView d, CoreInfo& info) {
  if (d.size() < 16) return fail(Errc::kBadFormat, "NT_FILE note too short");
  uint64_t count = load_le<uint64_t>(d.data()), page = load_le<uint64_t>(d.data() + 8);
  if (count > d.size() / 24 || count > kMaxMappedFiles - info.files.size() || page == 0 || page > (1u << 30))
    return fail(Errc::kBadFormat, "NT_FILE note has an impossible count or page size");
  size_t names = 16 + count * 24;
  uint64_t dropped = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint8_t* e = d.data() + 16 + i * 24;
    MappedFile f;
    f.start = load_le<uint64_t>(e);
    f.end = load_le<uint64_t>(e + 8);
    const uint64_t pgoff = load_le<uint64_t>(e + 16);
    const void* nul = names < d.size() ? std::memchr(d.data() + names, 0, d.size() - names) : nullptr;
    if (!nul) return fail(Errc::kBadFormat, "NT_FILE note: file names truncated");
    f.path.assign(reinterpret_cast<const char*>(d.data() + names),
                  static_cast<const uint8_t*>(nul) - (d.data() + names));
    names += f.path.size() + 1;
    if (f.end < f.start || pgoff > UINT64_MAX / page || pgoff * page > UINT64_MAX - (f.end - f.start)) {
      ++dropped;
      continue;
    }
    f.file_offset = pgoff * page;
    info.files.push_back(std::move(f));
  }
  if (dropped)
    info.warnings.push_back("NT_FILE note: " + std::to_string(dropped) +
                            " entries with a reversed range or an overflowing file offset dropped");
  return {};
}

// `base`: the notes' offset in the core file, for errors.
Status parse_notes(ByteView notes, uint64_t base, const std::string& file, CoreInfo& info) {
  size_t off = 0;
  while (off + 12 <= notes.size()) {
    uint32_t namesz = load_le<uint32_t>(&notes[off]), descsz = load_le<uint32_t>(&notes[off + 4]),
             type = load_le<uint32_t>(&notes[off + 8]);
    size_t name_off = off + 12, desc_off = name_off + ((uint64_t(namesz) + 3) & ~uint64_t(3));
    size_t end = desc_off + ((uint64_t(descsz) + 3) & ~uint64_t(3));
    if (desc_off > notes.size() || descsz > notes.size() - desc_off)
      return fail(Error(Errc::kBadFormat, "a note runs past its segment").at({file, std::nullopt, base + off}));
    std::string name(reinterpret_cast<const char*>(&notes[name_off]), namesz ? namesz - 1 : 0);
    ByteView desc = notes.subspan(desc_off, descsz);
    if (name == "CORE") {
      if (type == NT_PRSTATUS && desc.size() >= 36) {
        info.threads.push_back({load_le<int32_t>(desc.data() + 32), Bytes(desc.begin(), desc.end())});
      } else if (type == NT_PRPSINFO && desc.size() >= 136) {
        // elf_prpsinfo (64-bit): pr_pid at 24, pr_fname[16] at 40, pr_psargs[80] at 56
        info.pid = load_le<int32_t>(desc.data() + 24);
        info.command = std::string(reinterpret_cast<const char*>(desc.data() + 40), 16).c_str();
        info.args = std::string(reinterpret_cast<const char*>(desc.data() + 56), 80).c_str();
      } else if (type == NT_AUXV) {
        info.auxv.assign(desc.begin(), desc.end());
      } else if (type == kNtFile) {
        MLFX_TRY(parse_nt_file(desc, info));
      }
    }
    off = std::min(end, notes.size());
  }
  return {};
}

}  // namespace

bool ElfCoreLayer::probe(const Layer& file) {
  const uint8_t* p = file.view(0, sizeof(Elf64_Ehdr));
  if (!p || std::memcmp(p, ELFMAG, SELFMAG) != 0) return false;
  Elf64_Ehdr eh;
  std::memcpy(&eh, p, sizeof eh);
  return eh.e_type == ET_CORE;
}

Result<std::unique_ptr<ElfCoreLayer>> ElfCoreLayer::open(std::shared_ptr<const Layer> file) {
  const std::string& fname = file->name();
  Elf64_Ehdr eh;
  if (!file->view(0, sizeof eh))
    return fail(Errc::kBadFormat, fname + " is too short for an ELF header");
  std::memcpy(&eh, file->view(0, sizeof eh), sizeof eh);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
    return fail(Errc::kBadFormat, fname + " is not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
    return fail(Errc::kUnsupported, fname + ": only 64-bit little-endian cores are supported");
  if (eh.e_type != ET_CORE) return fail(Errc::kBadFormat, fname + " is an ELF file but not a core dump");
  if (eh.e_phentsize != sizeof(Elf64_Phdr))
    return fail(Errc::kBadFormat, fname + ": unexpected program header size");

  std::unique_ptr<ElfCoreLayer> layer(new ElfCoreLayer);
  CoreInfo& info = layer->info_;
  info.machine = eh.e_machine;
  uint64_t phnum = eh.e_phnum;
  if (phnum == PN_XNUM) {  // more than 65534 segments: the count is in section 0's sh_info
    Elf64_Shdr sh;
    if (!file->view(eh.e_shoff, sizeof sh))
      return fail(Errc::kBadFormat, fname + ": PN_XNUM without a readable section header");
    std::memcpy(&sh, file->view(eh.e_shoff, sizeof sh), sizeof sh);
    phnum = sh.sh_info;
  }
  if (phnum > kMaxPhdrs) return fail(Errc::kBadFormat, fname + ": implausible number of program headers");
  const uint8_t* ph = file->view(eh.e_phoff, phnum * sizeof(Elf64_Phdr));
  if (!ph)
    return fail(Error(Errc::kBadFormat, "program headers lie beyond the end of the file (truncated?)")
                    .at({fname, std::nullopt, eh.e_phoff}));

  uint64_t file_size = file->mapped_run(0, UINT64_MAX);
  std::vector<Segment> segments;
  for (uint64_t i = 0; i < phnum; ++i) {
    Elf64_Phdr p;
    std::memcpy(&p, ph + i * sizeof p, sizeof p);
    if (p.p_type == PT_NOTE) {
      if (p.p_filesz > kMaxNotes || !file->view(p.p_offset, p.p_filesz)) {
        info.warnings.push_back("note segment at file offset " + hex_address(p.p_offset) + " is missing (truncated core)");
        continue;
      }
      if (auto st = parse_notes({file->view(p.p_offset, p.p_filesz), p.p_filesz}, p.p_offset, fname, info); !st)
        info.warnings.push_back(st.error().to_string());
    } else if (p.p_type == PT_LOAD) {
      info.loads.push_back({p.p_vaddr, p.p_memsz, p.p_filesz, p.p_offset, p.p_flags});
      uint64_t present = p.p_filesz;
      if (p.p_offset >= file_size) present = 0;
      else if (present > file_size - p.p_offset) present = file_size - p.p_offset;
      if (present < p.p_filesz)
        info.warnings.push_back("segment " + hex_address(p.p_vaddr) + ": " + std::to_string(p.p_filesz - present) +
                                " of " + std::to_string(p.p_filesz) + " bytes missing (truncated core)");
      if (present > p.p_memsz) present = p.p_memsz;
      segments.push_back({p.p_vaddr, present, p.p_offset});
    }
  }
  if (info.loads.empty()) return fail(Errc::kBadFormat, fname + ": core has no memory segments");
  MLFX_TRY(layer->init(fname + " (process memory)", std::move(file), std::move(segments)));
  return layer;
}

ProcessImage ElfCoreLayer::process_image(std::shared_ptr<const ElfCoreLayer> core) {
  const CoreInfo& info = core->info();
  ProcessImage image;
  image.kind = "ELF core";
  image.mapped_files = info.files;
  image.warnings = info.warnings;
  image.facts.pid = info.pid;
  image.facts.command = info.command;
  image.facts.args = info.args;
  image.facts.threads = info.threads.size();
  image.facts.elf_machine = info.machine;
  image.facts.segments = info.loads.size();
  for (const auto& l : info.loads) image.facts.image_bytes += l.filesz;
  // The core declares its data (present or not: bytes a truncated core lost may have differed
  // from the file), and whole mappings writable (private changes) or unreadable (guards).
  auto end_of = [](uint64_t start, uint64_t len) { return len > UINT64_MAX - start ? UINT64_MAX : start + len; };
  for (const LoadSegment& l : info.loads) {
    if (l.filesz) image.declared.push_back({l.vaddr, end_of(l.vaddr, l.filesz)});
    if (l.memsz && ((l.flags & PF_W) || !(l.flags & PF_R))) image.declared.push_back({l.vaddr, end_of(l.vaddr, l.memsz)});
  }
  image.declared = normalized(std::move(image.declared));
  image.memory = std::move(core);
  return image;
}

}  // namespace mlfx::layers
