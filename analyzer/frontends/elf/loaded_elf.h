// An ELF object (executable or shared library) as loaded in a process address space:
// its dynamic symbol table is found through PT_DYNAMIC in memory, as the dynamic linker
// does, since section headers are not mapped.
#pragma once

#include <optional>
#include <string>

#include "layers/layer.h"

namespace mlfx::frontends {

class LoadedElf {
 public:
  // `base` is the address where the object's first page (its ELF header) is mapped.
  static Result<LoadedElf> at(const layers::Layer& mem, uint64_t base, std::string path);

  // The run-time address of a defined dynamic symbol, or nullopt when the object lacks it.
  Result<std::optional<uint64_t>> symbol(std::string_view name) const;

  uint64_t base() const { return base_; }
  uint64_t bias() const { return bias_; }  // run-time address minus link-time address
  const std::string& path() const { return path_; }

 private:
  LoadedElf(const layers::Layer& mem) : mem_(&mem) {}
  Result<std::optional<uint64_t>> lookup_gnu(std::string_view name) const;
  Result<std::optional<uint64_t>> lookup_sysv(std::string_view name) const;
  Result<bool> symbol_matches(uint64_t index, std::string_view name, uint64_t* value) const;
  void count_symbols();


  const layers::Layer* mem_;
  std::string path_;
  uint64_t base_ = 0, bias_ = 0;
  uint64_t symtab_ = 0, strtab_ = 0, strsz_ = 0, gnu_hash_ = 0, sysv_hash_ = 0;
  // How many symbols the hash table covers, as far as its arrays are readable: every chain
  // index must stay below it, so a hostile table cannot send a lookup far.
  uint64_t symbols_ = 0;
};

}  // namespace mlfx::frontends
