#include "frontends/elf/loaded_elf.h"

#include <elf.h>

#include <cstring>
#include <vector>

namespace mlfx::frontends {

namespace {
constexpr uint64_t kMaxPhdrs = 4096;
constexpr uint64_t kMaxDynamic = 4096;
constexpr uint64_t kMaxChain = 1u << 20;  // hostile hash chains must end
}  // namespace

Result<LoadedElf> LoadedElf::at(const layers::Layer& mem, uint64_t base, std::string path) {
  LoadedElf elf(mem);
  elf.path_ = std::move(path);
  elf.base_ = base;
  const std::string where = "ELF image of " + elf.path_;
  MLFX_ASSIGN(Elf64_Ehdr eh, mem.read_value<Elf64_Ehdr>(base));
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64)
    return fail(Errc::kBadFormat, where + ": no 64-bit ELF header in memory");
  if (eh.e_type != ET_DYN && eh.e_type != ET_EXEC)
    return fail(Errc::kBadFormat, where + ": not an executable or shared object");
  if (eh.e_phnum > kMaxPhdrs || eh.e_phentsize != sizeof(Elf64_Phdr))
    return fail(Errc::kBadFormat, where + ": implausible program headers");
  std::vector<Elf64_Phdr> ph(eh.e_phnum);
  MLFX_TRY(mem.read(base + eh.e_phoff, ph.data(), ph.size() * sizeof(Elf64_Phdr)));
  // The bias maps link-time addresses to run-time ones; the first PT_LOAD holds the header.
  const Elf64_Phdr* first_load = nullptr;
  const Elf64_Phdr* dynamic = nullptr;
  for (const auto& p : ph) {
    if (p.p_type == PT_LOAD && !first_load) first_load = &p;
    if (p.p_type == PT_DYNAMIC) dynamic = &p;
  }
  if (!first_load || !dynamic) return fail(Errc::kBadFormat, where + ": no PT_LOAD or PT_DYNAMIC");
  elf.bias_ = base - (first_load->p_vaddr & ~uint64_t(0xfff));
  uint64_t dyn_count = std::min<uint64_t>(dynamic->p_memsz / sizeof(Elf64_Dyn), kMaxDynamic);
  std::vector<Elf64_Dyn> dyn(dyn_count);
  MLFX_TRY(mem.read(elf.bias_ + dynamic->p_vaddr, dyn.data(), dyn.size() * sizeof(Elf64_Dyn)));
  // glibc relocates these pointers in place at load time on most architectures; an
  // unrelocated (link-time) value lies below the bias of a position-independent object.
  auto fix = [&](uint64_t v) { return (elf.bias_ && v < elf.bias_) ? v + elf.bias_ : v; };
  for (const auto& d : dyn) {
    if (d.d_tag == DT_NULL) break;
    switch (d.d_tag) {
      case DT_SYMTAB: elf.symtab_ = fix(d.d_un.d_ptr); break;
      case DT_STRTAB: elf.strtab_ = fix(d.d_un.d_ptr); break;
      case DT_STRSZ: elf.strsz_ = d.d_un.d_val; break;
      case DT_GNU_HASH: elf.gnu_hash_ = fix(d.d_un.d_ptr); break;
      case DT_HASH: elf.sysv_hash_ = fix(d.d_un.d_ptr); break;
      default: break;
    }
  }
  if (!elf.symtab_ || !elf.strtab_ || (!elf.gnu_hash_ && !elf.sysv_hash_))
    return fail(Errc::kBadFormat, where + ": dynamic section lacks a symbol table or hash table");
  return elf;
}

Result<bool> LoadedElf::symbol_matches(uint64_t index, std::string_view name, uint64_t* value) const {
  MLFX_ASSIGN(Elf64_Sym sym, mem_->read_value<Elf64_Sym>(symtab_ + index * sizeof(Elf64_Sym)));
  if (sym.st_name >= strsz_ || sym.st_shndx == SHN_UNDEF) return false;
  char buf[256];
  size_t n = std::min(name.size() + 1, sizeof buf);
  if (!mem_->is_mapped(strtab_ + sym.st_name, n)) return false;
  MLFX_TRY(mem_->read(strtab_ + sym.st_name, buf, n));
  if (std::memcmp(buf, name.data(), name.size()) != 0 || buf[name.size()] != 0) return false;
  *value = (sym.st_shndx == SHN_ABS) ? sym.st_value : bias_ + sym.st_value;
  return true;
}

Result<std::optional<uint64_t>> LoadedElf::lookup_gnu(std::string_view name) const {
  uint32_t h = 5381;
  for (unsigned char c : name) h = h * 33 + c;
  MLFX_ASSIGN(uint32_t nbuckets, mem_->read_value<uint32_t>(gnu_hash_));
  MLFX_ASSIGN(uint32_t symoffset, mem_->read_value<uint32_t>(gnu_hash_ + 4));
  MLFX_ASSIGN(uint32_t bloom_size, mem_->read_value<uint32_t>(gnu_hash_ + 8));
  if (nbuckets == 0) return std::optional<uint64_t>{};
  uint64_t buckets = gnu_hash_ + 16 + uint64_t(bloom_size) * 8;
  uint64_t chains = buckets + uint64_t(nbuckets) * 4;
  MLFX_ASSIGN(uint32_t index, mem_->read_value<uint32_t>(buckets + uint64_t(h % nbuckets) * 4));
  if (index < symoffset) return std::optional<uint64_t>{};
  for (uint64_t steps = 0; steps < kMaxChain; ++steps, ++index) {
    MLFX_ASSIGN(uint32_t ch, mem_->read_value<uint32_t>(chains + uint64_t(index - symoffset) * 4));
    uint64_t value = 0;
    if ((ch | 1) == (h | 1)) {
      MLFX_ASSIGN(bool match, symbol_matches(index, name, &value));
      if (match) return std::optional<uint64_t>(value);
    }
    if (ch & 1) break;
  }
  return std::optional<uint64_t>{};
}

Result<std::optional<uint64_t>> LoadedElf::lookup_sysv(std::string_view name) const {
  uint32_t h = 0;
  for (unsigned char c : name) {
    h = (h << 4) + c;
    uint32_t g = h & 0xf0000000;
    if (g) h ^= g >> 24;
    h &= ~g;
  }
  MLFX_ASSIGN(uint32_t nbucket, mem_->read_value<uint32_t>(sysv_hash_));
  if (nbucket == 0) return std::optional<uint64_t>{};
  MLFX_ASSIGN(uint32_t index, mem_->read_value<uint32_t>(sysv_hash_ + 8 + uint64_t(h % nbucket) * 4));
  uint64_t chains = sysv_hash_ + 8 + uint64_t(nbucket) * 4;
  for (uint64_t steps = 0; index != 0 && steps < kMaxChain; ++steps) {
    uint64_t value = 0;
    MLFX_ASSIGN(bool match, symbol_matches(index, name, &value));
    if (match) return std::optional<uint64_t>(value);
    MLFX_ASSIGN(index, mem_->read_value<uint32_t>(chains + uint64_t(index) * 4));
  }
  return std::optional<uint64_t>{};
}

Result<std::optional<uint64_t>> LoadedElf::symbol(std::string_view name) const {
  return gnu_hash_ ? lookup_gnu(name) : lookup_sysv(name);
}

}  // namespace mlfx::frontends
