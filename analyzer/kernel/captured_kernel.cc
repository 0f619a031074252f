#include "kernel/captured_kernel.h"

#include "mlfx/base/file.h"

namespace mlfx::kernel {
namespace {

constexpr size_t kMaxStreamBytes = size_t{256} << 20;  // kallsyms and BTF are a few MiB

}  // namespace

Result<std::unique_ptr<KernelImage>> open_captured_kernel(const evidence::DecryptedStreams& streams,
                                                          const physical::PhysicalImage& image, std::string& why_not) {
  const File* kallsyms = streams.find("kallsyms");
  const File* btf = streams.find("btf");
  if (!kallsyms || !btf) {
    why_not = kallsyms ? "the capture holds no 'btf' stream (the kernel had no /sys/kernel/btf/vmlinux), so its "
                         "structures cannot be laid out and its task list cannot be walked"
                       : "the capture holds no 'kallsyms' stream (/proc/kallsyms was not readable at capture), so "
                         "the kernel's structures cannot be found and its task list cannot be walked";
    return std::unique_ptr<KernelImage>();
  }
  MLFX_ASSIGN(std::string symbols, read_small_file(kallsyms->path(), kMaxStreamBytes));
  MLFX_ASSIGN(std::string types, read_small_file(btf->path(), kMaxStreamBytes));
  return KernelImage::open(image.physical_layer(), symbols, types, image.context().banner);
}

}  // namespace mlfx::kernel
