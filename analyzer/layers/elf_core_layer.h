// A process address space from an ELF core (ours, gcore's or the kernel's): PT_LOAD
// segments become the layer's segments; the notes describe threads and mapped files.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/process_image.h"
#include "layers/segmented_layer.h"
#include "mlfx/base/bytes.h"

namespace mlfx::layers {

struct CoreThread {  // one NT_PRSTATUS note
  int32_t tid = 0;
  Bytes prstatus;  // the raw elf_prstatus
};

struct LoadSegment {  // one PT_LOAD, as declared
  uint64_t vaddr = 0, memsz = 0, filesz = 0, offset = 0;
  uint32_t flags = 0;
};

struct CoreInfo {
  uint16_t machine = 0;  // e_machine
  int32_t pid = 0;
  std::string command;  // NT_PRPSINFO pr_fname
  std::string args;     // NT_PRPSINFO pr_psargs
  std::vector<CoreThread> threads;
  std::vector<MappedFile> files;  // the NT_FILE entries
  std::vector<LoadSegment> loads;
  Bytes auxv;
  std::vector<std::string> warnings;  // damage found and tolerated (e.g. a truncated core)
};

class ElfCoreLayer : public SegmentedLayer {
 public:
  // Cheap probe: does `file` start like an ELF core?
  static bool probe(const Layer& file);
  static Result<std::unique_ptr<ElfCoreLayer>> open(std::shared_ptr<const Layer> file);
  const CoreInfo& info() const { return info_; }
  // The process as the frontends see it: this layer's memory and mapped files, with no
  // ELF-core types.
  static ProcessImage process_image(std::shared_ptr<const ElfCoreLayer> core);

 private:
  ElfCoreLayer() = default;
  CoreInfo info_;
};

}  // namespace mlfx::layers
