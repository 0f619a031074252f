#include "frontends/elf/loaded_elf.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <optional>
#include <vector>

namespace mlfx::frontends {

namespace {
constexpr uint64_t kMaxPhdrs = 4096;
constexpr uint64_t kMaxDynamic = 4096;
constexpr uint64_t kChunkWords = 4096;  // hash table words read at a time
constexpr size_t kShortChain = 32;      // longer SysV chains get a bitmap of visited indices

// How many bytes from addr on can be read, across adjacent pieces, at most max.
uint64_t readable(const layers::Layer& mem, uint64_t addr, uint64_t max) {
  uint64_t n = 0;
  while (n < max && n <= UINT64_MAX - addr) {
    uint64_t run = mem.mapped_run(addr + n, max - n);
    if (!run) break;
    n += run;
  }
  return n;
}

// addr + words * 4, or nullopt when it wraps.
std::optional<uint64_t> word_at(uint64_t addr, uint64_t words) {
  if (words > (UINT64_MAX - addr) / 4) return std::nullopt;
  return addr + words * 4;
}
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
  elf.count_symbols();
  return elf;
}

// The dynamic section gives no symbol count: it comes from the hash table (SysV: nchain;
// GNU: the end of the chain of the highest bucket), capped by what is readable of the chain
// array and the symbol table. Unreadable headers leave 0: every lookup then finds nothing.
void LoadedElf::count_symbols() {
  symbols_ = 0;
  const uint64_t symtab_entries = readable(*mem_, symtab_, UINT64_MAX) / sizeof(Elf64_Sym);
  if (!gnu_hash_) {
    auto nbucket = mem_->read_value<uint32_t>(sysv_hash_);
    auto nchain = mem_->read_value<uint32_t>(sysv_hash_ + 4);
    if (!nbucket || !nchain || sysv_hash_ > UINT64_MAX - 8) return;
    auto chains = word_at(sysv_hash_ + 8, *nbucket);
    if (!chains) return;
    symbols_ = std::min<uint64_t>({*nchain, readable(*mem_, *chains, uint64_t(*nchain) * 4) / 4, symtab_entries});
    return;
  }
  auto nbuckets = mem_->read_value<uint32_t>(gnu_hash_);
  auto symoffset = mem_->read_value<uint32_t>(gnu_hash_ + 4);
  auto bloom_size = mem_->read_value<uint32_t>(gnu_hash_ + 8);
  if (!nbuckets || !symoffset || !bloom_size || gnu_hash_ > UINT64_MAX - 16) return;
  auto buckets = word_at(gnu_hash_ + 16, uint64_t(*bloom_size) * 2);
  auto chains = buckets ? word_at(*buckets, *nbuckets) : std::nullopt;
  if (!chains || readable(*mem_, *buckets, uint64_t(*nbuckets) * 4) < uint64_t(*nbuckets) * 4) return;
  std::vector<uint32_t> words;
  uint32_t last = 0;
  for (uint64_t i = 0; i < *nbuckets; i += kChunkWords) {
    words.resize(std::min<uint64_t>(kChunkWords, *nbuckets - i));
    if (!mem_->read(*buckets + i * 4, words.data(), words.size() * 4)) return;
    for (uint32_t b : words) last = std::max(last, b);
  }
  if (last < *symoffset) {  // no bucket holds a symbol
    symbols_ = std::min<uint64_t>(*symoffset, symtab_entries);
    return;
  }
  // The highest bucket's chain ends the table: walk to its terminator, as far as it is readable.
  uint64_t end = last;
  for (bool done = false; !done;) {
    auto at = word_at(*chains, end - *symoffset);
    const uint64_t n = at ? readable(*mem_, *at, kChunkWords * 4) / 4 : 0;
    words.resize(n);
    if (n == 0 || !mem_->read(*at, words.data(), n * 4)) break;
    for (uint32_t w : words) {
      ++end;
      if (w & 1) {
        done = true;
        break;
      }
    }
  }
  // Lookups read the chain array from symoffset on: all of it must be readable.
  const uint64_t chain_words = readable(*mem_, *chains, (end - *symoffset) * 4) / 4;
  symbols_ = std::min({end, *symoffset + chain_words, symtab_entries});
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
  MLFX_ASSIGN(uint32_t first, mem_->read_value<uint32_t>(buckets + uint64_t(h % nbuckets) * 4));
  if (first < symoffset) return std::optional<uint64_t>{};  // empty bucket
  if (first >= symbols_)
    return fail(Errc::kBadFormat, "ELF image of " + path_ + ": GNU hash bucket points at symbol " +
                                      std::to_string(first) + ", past the table's " + std::to_string(symbols_));
  // Indices only grow, so a chain cannot loop; symbols_ bounds one without a terminator.
  // Words are read a run at a time: a hostile chain may be as long as the table.
  uint32_t words[256];
  for (uint64_t index = first; index < symbols_;) {
    const uint64_t n = std::min<uint64_t>(std::size(words), symbols_ - index);
    MLFX_TRY(mem_->read(chains + (index - symoffset) * 4, words, n * 4));
    for (uint64_t k = 0; k < n; ++k, ++index) {
      uint64_t value = 0;
      if ((words[k] | 1) == (h | 1)) {
        MLFX_ASSIGN(bool match, symbol_matches(index, name, &value));
        if (match) return std::optional<uint64_t>(value);
      }
      if (words[k] & 1) return std::optional<uint64_t>{};
    }
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
  // Chains link by index and may loop in a hostile image: stop at the first repeat. Short
  // chains (all real ones) are checked against a few entries, longer ones against a bitmap.
  uint32_t recent[kShortChain];
  std::vector<bool> seen;
  const auto where = [&] { return "ELF image of " + path_ + ": SysV hash chain"; };
  for (size_t steps = 0; index != 0; ++steps) {
    if (index >= symbols_)
      return fail(Errc::kBadFormat, where() + " reaches symbol " + std::to_string(index) + ", past the table's " +
                                        std::to_string(symbols_));
    bool repeat = false;
    if (steps < kShortChain) {
      repeat = std::find(recent, recent + steps, index) != recent + steps;
      recent[steps] = index;
    } else {
      if (seen.empty()) {
        seen.assign(symbols_, false);
        for (uint32_t r : recent) seen[r] = true;
      }
      repeat = seen[index];
      seen[index] = true;
    }
    if (repeat) return fail(Errc::kBadFormat, where() + " loops at symbol " + std::to_string(index));
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
