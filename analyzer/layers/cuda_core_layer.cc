#include "layers/cuda_core_layer.h"

#include <elf.h>
#include <isa-l/igzip_lib.h>

#include <algorithm>
#include <cstring>

#include "layers/file_layer.h"
#include "mlfx/base/bytes.h"
#include "mlfx/cudacore/format.h"

namespace mlfx::layers {

namespace cc = mlfx::cudacore;

namespace {

constexpr uint64_t kMaxRowSize = 64 * 1024;  // today's rows are at most 136 bytes
constexpr size_t kMaxString = 4096;          // a device or generator name

bool is_gzip(const Layer& file) {
  const uint8_t* p = file.view(0, 2);
  return p && p[0] == 0x1f && p[1] == 0x8b;
}

// Inflates a gzip stream (several members too, as `cat a.gz b.gz` makes) into an in-memory
// file, at most `max` bytes of output.
Result<std::shared_ptr<const Layer>> inflate(const Layer& gz, uint64_t max) {
  const uint64_t in_size = gz.mapped_run(0, UINT64_MAX);
  const uint8_t* in = gz.view(0, in_size);
  if (!in) return fail(Errc::kIo, gz.name() + ": cannot view the compressed dump");
  MLFX_ASSIGN(File out, File::create_memory("mlfx-cuda-core"));
  std::vector<uint8_t> buf(8u << 20);
  uint64_t produced = 0, consumed = 0;
  while (consumed < in_size) {
    inflate_state st;
    isal_inflate_init(&st);
    st.crc_flag = ISAL_GZIP;
    st.next_in = const_cast<uint8_t*>(in + consumed);
    st.avail_in = static_cast<uint32_t>(std::min<uint64_t>(in_size - consumed, UINT32_MAX));
    uint64_t fed = st.avail_in;
    do {
      if (st.avail_in == 0 && consumed + fed < in_size) {  // members larger than 4 GiB: feed on
        st.next_in = const_cast<uint8_t*>(in + consumed + fed);
        st.avail_in = static_cast<uint32_t>(std::min<uint64_t>(in_size - consumed - fed, UINT32_MAX));
        fed += st.avail_in;
      }
      st.next_out = buf.data();
      st.avail_out = static_cast<uint32_t>(buf.size());
      int rc = isal_inflate(&st);
      if (rc != ISAL_DECOMP_OK)
        return fail(Error(Errc::kBadFormat, "the gzip-compressed GPU core dump is damaged (ISA-L inflate error " +
                                                std::to_string(rc) + ")")
                        .at({gz.name(), std::nullopt, consumed + fed - st.avail_in}));
      const uint64_t n = buf.size() - st.avail_out;
      if (n > max - produced)
        return fail(Errc::kUnsupported, gz.name() + ": the GPU core dump inflates to more than " + std::to_string(max) +
                                            " bytes, the limit; raise the analysis memory limit if the GPU's memory is that large");
      produced += n;
      MLFX_TRY(out.write_all({buf.data(), n}));
      if (st.block_state != ISAL_BLOCK_FINISH && n == 0 && st.avail_in == 0 && consumed + fed >= in_size)
        return fail(Error(Errc::kBadFormat, "the gzip-compressed GPU core dump ends in mid-stream (truncated?)")
                        .at({gz.name(), std::nullopt, in_size}));
    } while (st.block_state != ISAL_BLOCK_FINISH);
    consumed += fed - st.avail_in;
    // What follows a member is another member or nothing (trailing zeros of a padded file).
    while (consumed < in_size && in[consumed] == 0) ++consumed;
    if (consumed < in_size && !(in_size - consumed >= 2 && in[consumed] == 0x1f && in[consumed + 1] == 0x8b))
      return fail(Error(Errc::kBadFormat, "bytes after the gzip stream are not another gzip member")
                      .at({gz.name(), std::nullopt, consumed}));
  }
  MLFX_ASSIGN(std::unique_ptr<FileLayer> layer, FileLayer::open(out.path()));
  return std::shared_ptr<const Layer>(std::move(layer));
}

// The NUL-terminated string at `index` of a string table section (checked to lie in the file),
// at most `max` bytes; "" for an index past the table.
std::string table_string(const Layer& file, const Elf64_Shdr& table, uint64_t index, size_t max) {
  if (index >= table.sh_size) return "";
  const uint64_t room = table.sh_size - index;
  const char* s = reinterpret_cast<const char*>(file.view(table.sh_offset + index, room));
  return std::string(s, strnlen(s, std::min<uint64_t>(room, max)));
}

// Reads a section table's rows with sh_entsize as the stride; fields past it read as zero.
class Rows {
 public:
  Rows(const uint8_t* data, uint64_t size, uint64_t row) : data_(data), count_(row ? size / row : 0), row_(row) {}
  uint64_t count() const { return count_; }
  template <class T>
  T get(uint64_t i, uint32_t field) const {
    if (field + sizeof(T) > row_) return 0;
    return load_le<T>(data_ + i * row_ + field);
  }

 private:
  const uint8_t* data_;
  uint64_t count_, row_;
};

}  // namespace

struct CudaCoreLayer::SectionRef {  // a section header, checked against the file
  uint64_t index = 0;
  Elf64_Shdr h{};
  std::string name;
};

// Takes the ranges an .mlfx.unreadable table lists (zeros written where device memory could not
// be read) out of the segments: those bytes are absent, not zero.
Status CudaCoreLayer::remove_unreadable(std::vector<Segment>& segments, const std::vector<SectionRef>& tables,
                                        const Layer& file) {
  std::vector<AddressRange> holes;
  for (const SectionRef& t : tables) {
    Rows rows(file.view(t.h.sh_offset, t.h.sh_size), t.h.sh_size, t.h.sh_entsize);
    for (uint64_t i = 0; i < rows.count(); ++i) {
      const uint64_t addr = rows.get<uint64_t>(i, cc::UnreadableRow::address);
      const uint64_t size = rows.get<uint64_t>(i, cc::UnreadableRow::size);
      if (size) holes.push_back({addr, size > UINT64_MAX - addr ? UINT64_MAX : addr + size});
    }
  }
  holes = normalized(std::move(holes));
  if (holes.empty()) return {};
  std::vector<Segment> kept;
  auto h = holes.begin();
  for (const Segment& s : segments) {
    uint64_t at = s.start;
    const uint64_t end = s.start + s.size;
    while (h != holes.end() && h->end <= at) ++h;
    for (auto k = h; k != holes.end() && k->start < end; ++k) {
      if (k->start > at) kept.push_back({at, k->start - at, s.base_offset + (at - s.start)});
      const uint64_t cut = std::min(k->end, end);
      info_.unreadable_bytes += cut - std::max(k->start, at);
      at = std::max(at, cut);
    }
    if (at < end) kept.push_back({at, end - at, s.base_offset + (at - s.start)});
  }
  info_.warnings.push_back(std::to_string(info_.unreadable_bytes) + " bytes in " + std::to_string(holes.size()) +
                           " ranges could not be read when the dump was made (.mlfx.unreadable): not used");
  segments = std::move(kept);
  return {};
}

bool CudaCoreInfo::global_memory_skipped() const { return meta && (meta->flags & cc::kFlagSkipGlobalMemory); }

bool CudaCoreLayer::probe(const Layer& file) {
  if (is_gzip(file)) return true;
  const uint8_t* p = file.view(0, sizeof(Elf64_Ehdr));
  if (!p || std::memcmp(p, ELFMAG, SELFMAG) != 0) return false;
  Elf64_Ehdr eh;
  std::memcpy(&eh, p, sizeof eh);
  return eh.e_type == ET_CORE && eh.e_machine == cc::kMachine;
}

Result<std::unique_ptr<CudaCoreLayer>> CudaCoreLayer::open(std::shared_ptr<const Layer> file, uint64_t max_inflated) {
  std::unique_ptr<CudaCoreLayer> layer(new CudaCoreLayer);
  if (is_gzip(*file)) {
    MLFX_ASSIGN(std::shared_ptr<const Layer> elf, inflate(*file, max_inflated));
    layer->info_.gzip = true;
    MLFX_TRY(layer->parse(std::move(elf)));
  } else {
    MLFX_TRY(layer->parse(std::move(file)));
  }
  return layer;
}

Status CudaCoreLayer::parse(std::shared_ptr<const Layer> file) {
  const std::string& fname = file->name();
  const uint64_t file_size = file->mapped_run(0, UINT64_MAX);
  auto bad = [&](const std::string& what, std::optional<uint64_t> offset = std::nullopt) {
    return fail(Error(Errc::kBadFormat, "GPU core dump: " + what).at({fname, std::nullopt, offset}));
  };
  Elf64_Ehdr eh;
  if (!file->view(0, sizeof eh)) return bad("too short for an ELF header (" + std::to_string(file_size) + " bytes)");
  std::memcpy(&eh, file->view(0, sizeof eh), sizeof eh);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return bad("not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
    return bad("not a 64-bit little-endian ELF file, as CUDA core dumps are");
  if (eh.e_type != ET_CORE || eh.e_machine != cc::kMachine)
    return bad("an ELF file but not a CUDA core dump (type " + std::to_string(eh.e_type) + ", machine " +
               std::to_string(eh.e_machine) + "; a CUDA dump has ET_CORE and EM_CUDA 190)");
  info_.abi_version = eh.e_ident[EI_ABIVERSION];
  if (eh.e_ident[EI_OSABI] != cc::kOsAbi)
    info_.warnings.push_back("OS ABI " + std::to_string(eh.e_ident[EI_OSABI]) + " instead of CUDA's 0x33; read as a CUDA dump");
  if (eh.e_shentsize != sizeof(Elf64_Shdr))
    return bad("section header size " + std::to_string(eh.e_shentsize) + " (64 expected)");
  if (eh.e_shoff == 0 || eh.e_shoff > file_size || file_size - eh.e_shoff < sizeof(Elf64_Shdr))
    return bad("the section headers at offset " + std::to_string(eh.e_shoff) + " lie beyond the end of the file (" +
               std::to_string(file_size) + " bytes; truncated?)");
  auto header = [&](uint64_t i) {
    Elf64_Shdr h;
    std::memcpy(&h, file->view(eh.e_shoff + i * sizeof h, sizeof h), sizeof h);
    return h;
  };
  // Extended numbering: past 0xff00 sections the count and the name table's index are in section 0.
  const Elf64_Shdr zero = header(0);
  uint64_t count = eh.e_shnum, shstrndx = eh.e_shstrndx;
  if (count == 0) {
    count = zero.sh_size;
    info_.extended_numbering = true;
  }
  if (shstrndx == SHN_XINDEX) {
    shstrndx = zero.sh_link;
    info_.extended_numbering = true;
  }
  if (count > (file_size - eh.e_shoff) / sizeof(Elf64_Shdr))
    return bad(std::to_string(count) + " section headers do not fit between offset " + std::to_string(eh.e_shoff) +
               " and the end of the file (truncated?)", eh.e_shoff);
  info_.sections = count;

  auto in_file = [&](const Elf64_Shdr& h) { return h.sh_offset <= file_size && h.sh_size <= file_size - h.sh_offset; };
  std::optional<Elf64_Shdr> names;
  if (shstrndx != SHN_UNDEF && shstrndx < count && header(shstrndx).sh_type == SHT_STRTAB && in_file(header(shstrndx)))
    names = header(shstrndx);
  else
    info_.warnings.push_back("no usable section name table (index " + std::to_string(shstrndx) + ")");
  auto name_of = [&](const Elf64_Shdr& h) { return names ? table_string(*file, *names, h.sh_name, 256) : ""; };
  auto describe = [&](const SectionRef& s) {
    return "section " + std::to_string(s.index) + (s.name.empty() ? "" : " (" + s.name + ")");
  };

  std::vector<SectionRef> memory, unreadable;
  std::optional<SectionRef> devices, meta, strtab;
  std::vector<SectionRef> contexts;
  for (uint64_t i = 1; i < count; ++i) {
    SectionRef s{i, header(i), ""};
    const uint32_t type = s.h.sh_type;
    const bool is_memory = type == uint32_t(cc::SectionType::kGlobalMem) || type == uint32_t(cc::SectionType::kManagedMem);
    const bool is_table = type == uint32_t(cc::SectionType::kDeviceTable) ||
                          type == uint32_t(cc::SectionType::kContextTable) || type == uint32_t(cc::SectionType::kMetaData);
    const bool is_strtab = type == SHT_STRTAB && i != shstrndx;
    const bool is_unreadable = type == cc::kUnreadableType;
    if (!is_memory && !is_table && !is_strtab && !is_unreadable) continue;  // registers, cubins, grids...: not read
    s.name = name_of(s.h);
    if (!in_file(s.h))
      return bad(describe(s) + ": its " + std::to_string(s.h.sh_size) + " bytes at offset " +
                 std::to_string(s.h.sh_offset) + " run past the end of the file (" + std::to_string(file_size) +
                 " bytes; truncated or forged)", eh.e_shoff + i * sizeof(Elf64_Shdr));
    if (is_memory) {
      if (s.h.sh_size && s.h.sh_addr > UINT64_MAX - s.h.sh_size)
        return bad(describe(s) + ": device range " + hex_address(s.h.sh_addr) + " + " + std::to_string(s.h.sh_size) +
                   " wraps around", eh.e_shoff + i * sizeof(Elf64_Shdr));
      memory.push_back(std::move(s));
      continue;
    }
    if (is_strtab) {
      if (s.name == cc::kStringTableName && !strtab) strtab = std::move(s);
      continue;
    }
    if (is_unreadable) {
      if (s.h.sh_entsize != cc::UnreadableRow::kSize)
        return bad(describe(s) + ": row size " + std::to_string(s.h.sh_entsize) + " (16 expected)",
                   eh.e_shoff + i * sizeof(Elf64_Shdr));
      unreadable.push_back(std::move(s));
      continue;
    }
    if (s.h.sh_entsize == 0 || s.h.sh_entsize > kMaxRowSize)
      return bad(describe(s) + ": row size (sh_entsize) " + std::to_string(s.h.sh_entsize) + " is impossible",
                 eh.e_shoff + i * sizeof(Elf64_Shdr));
    if (type == uint32_t(cc::SectionType::kContextTable)) contexts.push_back(std::move(s));
    else if (type == uint32_t(cc::SectionType::kDeviceTable) && !devices) devices = std::move(s);
    else if (type == uint32_t(cc::SectionType::kMetaData) && !meta) meta = std::move(s);
    else info_.warnings.push_back(describe(s) + ": a second table of its kind, ignored");
  }

  auto string_at = [&](uint64_t index) { return strtab ? table_string(*file, strtab->h, index, kMaxString) : ""; };
  auto rows_of = [&](const SectionRef& s) {
    if (s.h.sh_size % s.h.sh_entsize)
      info_.warnings.push_back(describe(s) + ": " + std::to_string(s.h.sh_size % s.h.sh_entsize) +
                               " bytes after its last whole row ignored");
    return Rows(file->view(s.h.sh_offset, s.h.sh_size), s.h.sh_size, s.h.sh_entsize);
  };
  if (devices) {
    using R = cc::DeviceRow;
    info_.device_row_size = static_cast<uint32_t>(devices->h.sh_entsize);
    Rows rows = rows_of(*devices);
    for (uint64_t i = 0; i < rows.count(); ++i)
      info_.devices.push_back({string_at(rows.get<uint64_t>(i, R::dev_name)), string_at(rows.get<uint64_t>(i, R::dev_type)),
                               string_at(rows.get<uint64_t>(i, R::sm_type)), rows.get<uint32_t>(i, R::dev_id),
                               rows.get<uint32_t>(i, R::pci_bus_id), rows.get<uint32_t>(i, R::pci_dev_id),
                               rows.get<uint32_t>(i, R::num_sms), rows.get<uint32_t>(i, R::sm_major),
                               rows.get<uint32_t>(i, R::sm_minor)});
  }
  for (const SectionRef& s : contexts) {
    using R = cc::ContextRow;
    Rows rows = rows_of(s);
    for (uint64_t i = 0; i < rows.count(); ++i)
      info_.contexts.push_back({rows.get<uint64_t>(i, R::context_id), rows.get<uint64_t>(i, R::global_window_base),
                                rows.get<uint32_t>(i, R::device_index), rows.get<uint32_t>(i, R::tid)});
  }
  if (meta) {
    using R = cc::MetaDataRow;
    Rows rows = rows_of(*meta);
    if (rows.count())
      info_.meta = CudaMetaData{string_at(rows.get<uint64_t>(0, R::generator_name)), rows.get<uint32_t>(0, R::driver_major),
                                rows.get<uint32_t>(0, R::driver_minor), rows.get<uint32_t>(0, R::cuda_major),
                                rows.get<uint32_t>(0, R::cuda_minor), rows.get<uint32_t>(0, R::flags),
                                rows.get<uint32_t>(0, R::timestamp)};
  }

  // Memory sections by device address; two that overlap make every address in both ambiguous.
  std::sort(memory.begin(), memory.end(), [](const SectionRef& a, const SectionRef& b) { return a.h.sh_addr < b.h.sh_addr; });
  std::vector<Segment> segments;
  for (size_t i = 0; i < memory.size(); ++i) {
    const SectionRef& s = memory[i];
    if (s.h.sh_size == 0) continue;
    if (!segments.empty() && segments.back().start + segments.back().size > s.h.sh_addr) {
      const SectionRef& prev = *std::find_if(memory.rbegin() + (memory.size() - i), memory.rend(),
                                             [](const SectionRef& m) { return m.h.sh_size != 0; });
      return bad(describe(prev) + " and " + describe(s) + " overlap at device address " + hex_address(s.h.sh_addr) +
                 ": the dump is forged or damaged");
    }
    const bool managed = s.h.sh_type == uint32_t(cc::SectionType::kManagedMem);
    (managed ? info_.managed_sections : info_.global_sections) += 1;
    (managed ? info_.managed_bytes : info_.global_bytes) += s.h.sh_size;
    segments.push_back({s.h.sh_addr, s.h.sh_size, s.h.sh_offset});
  }
  MLFX_TRY(remove_unreadable(segments, unreadable, *file));
  if (info_.global_memory_skipped())
    info_.warnings.push_back("the dump was made with skip_global_memory: device memory is not in it");
  else if (segments.empty())
    info_.warnings.push_back("the dump holds no global or managed memory sections");
  return init(fname + " (GPU memory)", std::move(file), std::move(segments));
}

}  // namespace mlfx::layers
