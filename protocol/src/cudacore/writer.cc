#include "mlfx/cudacore/writer.h"

#include <elf.h>

#include <cstring>

namespace mlfx::cudacore {

namespace {

constexpr uint64_t kAlign = 8;
uint64_t aligned(uint64_t v) { return (v + kAlign - 1) & ~(kAlign - 1); }

template <class T>
void put(std::vector<uint8_t>& row, uint32_t offset, T v) {
  if (offset + sizeof(T) <= row.size()) std::memcpy(row.data() + offset, &v, sizeof(T));  // little-endian hosts only
}

Section named(std::string name, SectionType type) {
  Section s;
  s.name = std::move(name);
  s.type = uint32_t(type);
  return s;
}

bool zeros(const Sink& sink, uint64_t n) {
  static const uint8_t kZero[kAlign] = {};
  return n == 0 || sink(kZero, n);
}

}  // namespace

struct CoreWriter::Plan {
  std::vector<uint64_t> offsets;  // of every section's data, index 0 = the null section
  std::string shstrtab{'\0'};
  std::vector<uint32_t> name_index;
  uint64_t shoff = 0, total = 0;
};

uint64_t CoreWriter::add_string(std::string_view s) {
  uint64_t index = strtab_.size();
  strtab_.append(s);
  strtab_.push_back('\0');
  return index;
}

uint32_t CoreWriter::add(Section section) {
  if (!section.produce) section.size = section.data.size();
  sections_.push_back(std::move(section));
  return static_cast<uint32_t>(sections_.size());  // index 0 is the null section
}

uint32_t CoreWriter::add_meta_data(const MetaData& m) {
  std::vector<uint8_t> row(MetaDataRow::kSizes[0]);
  put<uint64_t>(row, MetaDataRow::generator_name, add_string(m.generator));
  put(row, MetaDataRow::driver_major, m.driver_major);
  put(row, MetaDataRow::driver_minor, m.driver_minor);
  put(row, MetaDataRow::cuda_major, m.cuda_major);
  put(row, MetaDataRow::cuda_minor, m.cuda_minor);
  put(row, MetaDataRow::flags, m.flags);
  put(row, MetaDataRow::timestamp, m.timestamp);
  Section s = named(kMetaDataName, SectionType::kMetaData);
  s.entsize = row.size();
  s.data = std::move(row);
  return add(std::move(s));
}

uint32_t CoreWriter::add_device_table(const std::vector<DeviceInfo>& devices) {
  Section s = named(kDeviceTableName, SectionType::kDeviceTable);
  s.entsize = devices.empty() ? DeviceRow::kSizes[2] : devices.front().row_size;
  for (const DeviceInfo& d : devices) {
    std::vector<uint8_t> row(s.entsize);
    put<uint64_t>(row, DeviceRow::dev_name, add_string(d.name));
    put<uint64_t>(row, DeviceRow::dev_type, add_string(d.type));
    put<uint64_t>(row, DeviceRow::sm_type, add_string(d.sm_type));
    put(row, DeviceRow::dev_id, d.dev_id);
    put(row, DeviceRow::pci_bus_id, d.pci_bus_id);
    put(row, DeviceRow::pci_dev_id, d.pci_dev_id);
    put(row, DeviceRow::num_sms, d.num_sms);
    put(row, DeviceRow::sm_major, d.sm_major);
    put(row, DeviceRow::sm_minor, d.sm_minor);
    s.data.insert(s.data.end(), row.begin(), row.end());
  }
  return add(std::move(s));
}

uint32_t CoreWriter::add_context_table(uint32_t device_table, uint32_t device_index,
                                       const std::vector<ContextInfo>& contexts) {
  Section s = named(std::string(kContextTablePrefix) + ".dev" + std::to_string(device_index),
                    SectionType::kContextTable);
  s.entsize = ContextRow::kSizes[0];
  s.link = device_table;
  s.info = device_index;
  for (const ContextInfo& c : contexts) {
    std::vector<uint8_t> row(s.entsize);
    put(row, ContextRow::context_id, c.context_id);
    put(row, ContextRow::global_window_base, c.global_window_base);
    put(row, ContextRow::device_index, c.device_index);
    put(row, ContextRow::tid, c.tid);
    s.data.insert(s.data.end(), row.begin(), row.end());
  }
  return add(std::move(s));
}

uint32_t CoreWriter::add_memory(uint64_t addr, std::vector<uint8_t> bytes, bool managed) {
  Section s = named(std::string(kGlobalPrefix) + "." + std::to_string(memory_sections_++),
                    managed ? SectionType::kManagedMem : SectionType::kGlobalMem);
  s.addr = addr;
  s.data = std::move(bytes);
  return add(std::move(s));
}

uint32_t CoreWriter::add_memory(uint64_t addr, uint64_t size, std::function<bool(const Sink&, std::string*)> produce,
                                bool managed) {
  Section s = named(std::string(kGlobalPrefix) + "." + std::to_string(memory_sections_++),
                    managed ? SectionType::kManagedMem : SectionType::kGlobalMem);
  s.addr = addr;
  s.size = size;
  s.produce = std::move(produce);
  return add(std::move(s));
}

uint32_t CoreWriter::add_unreadable_table(size_t capacity, std::function<Ranges()> rows) {
  Section s;
  s.name = kUnreadableName;
  s.type = kUnreadableType;
  s.entsize = UnreadableRow::kSize;
  s.size = capacity * UnreadableRow::kSize;
  s.produce = [capacity, rows = std::move(rows)](const Sink& emit, std::string* error) {
    const Ranges ranges = rows();
    if (ranges.size() > capacity) {
      if (error) *error = std::to_string(ranges.size()) + " unreadable ranges for a table of " + std::to_string(capacity);
      return false;
    }
    std::vector<uint8_t> table(capacity * UnreadableRow::kSize);
    for (size_t i = 0; i < ranges.size(); ++i) {
      std::memcpy(&table[i * UnreadableRow::kSize + UnreadableRow::address], &ranges[i].first, 8);
      std::memcpy(&table[i * UnreadableRow::kSize + UnreadableRow::size], &ranges[i].second, 8);
    }
    return table.empty() || emit(table.data(), table.size());
  };
  return add(std::move(s));
}

CoreWriter::Plan CoreWriter::plan() const {
  Plan p;
  uint64_t at = sizeof(Elf64_Ehdr);
  p.offsets.push_back(0);
  p.name_index.push_back(0);
  auto name = [&p](std::string_view n) {
    p.name_index.push_back(static_cast<uint32_t>(p.shstrtab.size()));
    p.shstrtab.append(n);
    p.shstrtab.push_back('\0');
  };
  for (const Section& s : sections_) {
    at = aligned(at);
    p.offsets.push_back(at);
    at += s.size;
    name(s.name);
  }
  name(".shstrtab");
  name(kStringTableName);
  at = aligned(at);
  p.offsets.push_back(at);
  at += p.shstrtab.size();
  at = aligned(at);
  p.offsets.push_back(at);
  at += strtab_.size();
  p.shoff = aligned(at);
  p.total = p.shoff + p.offsets.size() * sizeof(Elf64_Shdr);
  return p;
}

uint64_t CoreWriter::total_size() const { return plan().total; }

bool CoreWriter::write(const Sink& sink, std::string* error) const {
  const Plan p = plan();
  const uint64_t count = p.offsets.size();
  const uint64_t shstrndx = sections_.size() + 1;
  const bool extended = extended_ || count >= SHN_LORESERVE;

  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_ident[EI_OSABI] = kOsAbi;
  eh.e_ident[EI_ABIVERSION] = abi_version_;
  eh.e_type = ET_CORE;
  eh.e_machine = kMachine;
  eh.e_version = EV_CURRENT;
  eh.e_shoff = p.shoff;
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_shentsize = sizeof(Elf64_Shdr);
  eh.e_shnum = extended ? 0 : static_cast<uint16_t>(count);
  eh.e_shstrndx = extended ? SHN_XINDEX : static_cast<uint16_t>(shstrndx);
  if (!sink(&eh, sizeof eh)) return false;

  uint64_t at = sizeof eh;
  auto pad_to = [&](uint64_t offset) {
    bool ok = zeros(sink, offset - at);
    at = offset;
    return ok;
  };
  for (size_t i = 0; i < sections_.size(); ++i) {
    const Section& s = sections_[i];
    if (!pad_to(p.offsets[i + 1])) return false;
    if (s.produce) {
      uint64_t emitted = 0;
      const Sink counted = [&](const void* data, size_t len) {
        if (len > s.size - emitted) return false;
        emitted += len;
        return sink(data, len);
      };
      if (!s.produce(counted, error)) return false;
      if (emitted != s.size) {
        if (error) *error = s.name + ": " + std::to_string(emitted) + " bytes produced, " + std::to_string(s.size) + " declared";
        return false;
      }
    } else if (!s.data.empty() && !sink(s.data.data(), s.data.size())) {
      return false;
    }
    at += s.size;
  }
  if (!pad_to(p.offsets[shstrndx]) || !sink(p.shstrtab.data(), p.shstrtab.size())) return false;
  at += p.shstrtab.size();
  if (!pad_to(p.offsets[shstrndx + 1]) || !sink(strtab_.data(), strtab_.size())) return false;
  at += strtab_.size();
  if (!pad_to(p.shoff)) return false;

  std::vector<Elf64_Shdr> headers(count);
  if (extended) {
    headers[0].sh_size = count;
    headers[0].sh_link = static_cast<uint32_t>(shstrndx);
  }
  for (size_t i = 0; i < sections_.size(); ++i) {
    const Section& s = sections_[i];
    Elf64_Shdr& h = headers[i + 1];
    h.sh_name = p.name_index[i + 1];
    h.sh_type = s.type;
    h.sh_addr = s.addr;
    h.sh_offset = p.offsets[i + 1];
    h.sh_size = s.size;
    h.sh_link = s.link;
    h.sh_info = s.info;
    h.sh_entsize = s.entsize;
    h.sh_addralign = s.entsize ? kAlign : 1;
  }
  for (uint64_t i : {shstrndx, shstrndx + 1}) {
    Elf64_Shdr& h = headers[i];
    h.sh_name = p.name_index[i];
    h.sh_type = SHT_STRTAB;
    h.sh_offset = p.offsets[i];
    h.sh_size = i == shstrndx ? p.shstrtab.size() : strtab_.size();
    h.sh_addralign = 1;
  }
  return sink(headers.data(), headers.size() * sizeof(Elf64_Shdr));
}

}  // namespace mlfx::cudacore
