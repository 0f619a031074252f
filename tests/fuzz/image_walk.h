// The walk shared by the elf_core and python_objects targets: everything recover.cc does
// with the objects of a process image, bounded so that one input stays cheap.
#pragma once

#include <string>
#include <vector>

#include "frontends/cpython/python_objects.h"
#include "frontends/torch/module_walker.h"
#include "frontends/torch/tensor_reader.h"
#include "fuzz_support.h"
#include "base/diagnostics.h"

namespace mlfx::fuzz {

// ModuleWalker::scan over `objects`, then roots(), and for (a few) roots state_dict(),
// architecture() and TensorReader::read of every entry.
inline void walk_modules(const frontends::cpython::ObjectReader& reader, const std::vector<uint64_t>& objects,
                         Diagnostics& diag) {
  frontends::torch::ModuleWalker walker(reader, diag);
  walker.scan(objects);
  const std::vector<uint64_t> roots = walker.roots();
  if (roots.size() > walker.modules().size())
    invariant_failed("roots() lists only scanned modules", std::to_string(roots.size()));
  frontends::torch::TensorReader tensors(reader);
  size_t n = 0;
  for (uint64_t root : roots) {
    if (++n > 8) break;
    auto entries = walker.state_dict(root).entries;
    // As recover.cc writes architecture.json: strings from the image need not be UTF-8.
    (void)walker.architecture(root).dump(1, ' ', false, json::Json::error_handler_t::replace);
    size_t read = 0;
    for (const auto& e : entries) {
      if (++read > 256) break;
      auto t = tensors.read(e.tensor);
      if (t && t->sizes.size() != t->strides.size())
        invariant_failed("a tensor has as many strides as sizes", e.key);
    }
  }
}

}  // namespace mlfx::fuzz
