// The kernel of a decrypted whole-memory bundle, found from its captured kallsyms and BTF
// streams alone: one way in for mlfx recover (processes without a pagemap) and mlfx ps/maps.
// A library of its own (mlfx_kernel_capture), so that mlfx_kernel, which the fuzz build links
// without the evidence code, stays free of it.
#pragma once

#include <memory>
#include <string>

#include "evidence/bundle_check.h"
#include "kernel/tasks.h"
#include "physical/physical_image.h"

namespace mlfx::kernel {

// The kernel in `image`, laid out with the bundle's 'kallsyms' and 'btf' streams and checked
// against the banner of the image's context. Null when the bundle lacks either stream, with
// the why (a sentence naming the stream) in `why_not`: the capture can still be read from its
// pagemaps. An error when a stream cannot be read or the kernel is not found in the image.
Result<std::unique_ptr<KernelImage>> open_captured_kernel(const evidence::DecryptedStreams& streams,
                                                          const physical::PhysicalImage& image, std::string& why_not);

}  // namespace mlfx::kernel
