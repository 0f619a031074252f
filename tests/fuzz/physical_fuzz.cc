// Fuzzes what the lab reads of a whole-memory capture (protocol/doc/physical-capture.md): the
// LiME image, the raw pagemap stream and the capture context, and the process rebuilt from them.
//
// The input is four parts: u32 n, then n bytes of LiME image; u32 m, then m bytes of pagemap
// stream (none when m is 0); u32 k, then k bytes of moved stream (pages read from the process,
// none when k is 0); the rest is the context's JSON (a length past the end takes what is left). Each part
// is written to its own memfd and opened with FileLayer, as recovery opens decrypted streams.
// LimeLayer::open alone, then PhysicalImage::open, check_banner, and process() of every pid
// with a pagemap (and of one without); a rebuilt process is read at every segment boundary,
// and PythonRuntime::locate plus the module walk of image_walk.h run through it.
//
// Invariants beyond "no crash, leak or hang": the image's and every rebuilt process's
// segments are sorted, disjoint and readable (segment_checks.h); a rebuilt process maps exactly
// the pages it counts as in the image; every byte it maps is the image's byte at the frame the
// pagemap names.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "fuzz_support.h"
#include "image_walk.h"
#include "layers/file_layer.h"
#include "mlfx/base/bytes.h"
#include "physical/physical_image.h"
#include "segment_checks.h"

namespace {

using namespace mlfx;

// One memfd per part, for the whole process, rewritten for every input.
std::shared_ptr<const layers::Layer> part_as_layer(int index, const uint8_t* data, size_t size) {
  static int fds[3] = {-1, -1, -1};
  int& fd = fds[index];
  if (fd < 0 && (fd = memfd_create("mlfx-fuzz-part", MFD_CLOEXEC)) < 0)
    fuzz::invariant_failed("memfd_create", std::strerror(errno));
  if (ftruncate(fd, 0) != 0) fuzz::invariant_failed("ftruncate memfd", std::strerror(errno));
  for (size_t done = 0; done < size;) {
    ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fuzz::invariant_failed("write memfd", std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  auto layer = layers::FileLayer::open("/proc/self/fd/" + std::to_string(fd));
  if (!layer) fuzz::invariant_failed("FileLayer opens the memfd", layer.error().to_string());
  return std::shared_ptr<const layers::Layer>(std::move(*layer));
}

// The next length-prefixed part of the input.
std::pair<const uint8_t*, size_t> take(const uint8_t*& data, size_t& size) {
  if (size < 4) return {data + size, 0};
  size_t n = load_le<uint32_t>(data);
  data += 4, size -= 4;
  n = std::min(n, size);
  const uint8_t* part = data;
  data += n, size -= n;
  return {part, n};
}

void check_process(const physical::PhysicalImage& img, int32_t pid, uint64_t memory_size) {
  auto p = img.process(pid);
  if (!p) return;
  const auto* mem = dynamic_cast<const layers::SegmentedLayer*>(p->image.memory.get());
  if (!mem) fuzz::invariant_failed("a rebuilt process is a segmented layer", std::to_string(pid));
  fuzz::check_segments(*mem);
  const uint64_t ps = img.context().page_size;
  uint64_t mapped = 0;
  for (const layers::Segment& s : mem->segments()) {
    mapped += s.size;
    if (s.size % ps || s.start % ps) fuzz::invariant_failed("a rebuilt process maps whole pages", hex_address(s.start));
    // Its first byte is the image's byte at some frame (or a moved page's): the same bytes.
    const uint8_t* v = mem->view(s.start, 1);
    bool found = false;
    if (s.base_offset >= memory_size) {  // a page of the moved stream, which follows the image
      if (s.size != ps) fuzz::invariant_failed("a moved page is one page", hex_address(s.start));
      continue;
    }
    for (const layers::Segment& r : img.physical().segments())
      if (s.base_offset >= r.base_offset && s.base_offset + s.size <= r.base_offset + r.size) {
        const uint8_t* w = img.physical().view(r.start + (s.base_offset - r.base_offset), 1);
        found = v && w && *v == *w;
      }
    if (!found) fuzz::invariant_failed("a rebuilt page lies within one of the image's ranges", hex_address(s.start));
  }
  if (mapped != (p->pages.in_image + p->pages_moved_supplied) * ps)
    fuzz::invariant_failed("a rebuilt process maps exactly the pages it counts as in the image",
                           std::to_string(mapped) + " vs " + std::to_string(p->pages.in_image));
  Diagnostics diag;
  auto rt = frontends::cpython::PythonRuntime::locate(*mem, p->image.mapped_files, diag);
  if (!rt) return;
  frontends::cpython::ObjectReader reader(*mem, rt->layout(), diag);
  fuzz::walk_modules(reader, rt->tracked_objects(diag), diag);
}

void run(const uint8_t* data, size_t size) {
  auto [lime, lime_size] = take(data, size);
  auto [pagemap, pagemap_size] = take(data, size);
  auto [moved, moved_size] = take(data, size);
  const std::string context(reinterpret_cast<const char*>(data), size);
  std::shared_ptr<const layers::Layer> image = part_as_layer(0, lime, lime_size);
  if (auto alone = layers::LimeLayer::open(image)) fuzz::check_segments(**alone);
  // An empty part 2: a capture without --pid has no pagemap stream.
  auto img = physical::PhysicalImage::open(image, context, pagemap_size ? part_as_layer(1, pagemap, pagemap_size) : nullptr,
                                           moved_size ? part_as_layer(2, moved, moved_size) : nullptr);
  if (!img) return;
  fuzz::check_segments(img->physical());
  (void)img->check_banner();
  for (int32_t pid : img->pids_with_pagemap()) check_process(*img, pid, lime_size);
  (void)img->process(1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run(data, size);
  return 0;
}
