// Fuzzes the kernel walk over a whole-memory image (analyzer/kernel: mlfx ps, mlfx maps, and
// recovery of processes without a pagemap): KernelImage::open from a LiME image, kallsyms and
// BTF, then tasks(), vmas(), process_image() and count_pages() of the first processes, and
// process_list() (mlfx ps --json).
//
// The input is four parts: u32 n, then n bytes of LiME image; u32 m, then m bytes of kallsyms
// text; u32 b, then b bytes of BTF; the rest is the kernel banner from the capture's context
// (a length past the end takes what is left). The image is read from memory (LimeLayer over
// a memory-backed layer).
//
// Invariants beyond "no crash, leak or hang", from tasks.h, kernel_space.h and page_table.h:
//  * a kernel found: 4 or 5 levels, phys_base 2 MiB aligned, linux_banner translated through
//    init_top_pgt to where the image holds the banner;
//  * tasks: at most kMaxTasks, init_task first, no task twice, comm at most 64 bytes without
//    NUL, a user task's pgd_physical is where the kernel's tables put its pgd;
//  * VMAs: at most kMaxVmas, in address order, page-aligned non-empty ranges;
//  * a rebuilt process: its memory is its page tables over the image, limited to the user
//    half; a byte is readable exactly when translate() says its page is present and the image
//    holds its frame, and reads give the image's bytes at that frame; runs never pass their
//    maximum nor the user half; it counts as many segments as VMAs and whole pages in memory;
//  * count_pages(): as many pages as the range holds, each counted in the state translate()
//    gives it (present pages split by whether the image holds their first byte), for up to
//    256 pages at each end of a VMA.
#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "kernel/listing.h"
#include "kernel/tasks.h"
#include "layers/lime_layer.h"
#include "mlfx/base/bytes.h"
#include "synthetic_image.h"

namespace {

using namespace mlfx;
using namespace mlfx::kernel;

constexpr size_t kMaxProcessesChecked = 8;      // per input, to keep runs short
constexpr size_t kMaxVmasChecked = 32;
constexpr uint64_t kMaxPagesRecounted = 256;   // at each end of a VMA, page by page

std::string hex(uint64_t v) { return hex_address(v); }

// The next length-prefixed part of the input.
std::string_view take(const uint8_t*& data, size_t& size) {
  if (size < 4) return {};
  size_t n = load_le<uint32_t>(data);
  data += 4, size -= 4;
  n = std::min(n, size);
  const std::string_view part(reinterpret_cast<const char*>(data), n);
  data += n, size -= n;
  return part;
}

void check_kernel(const KernelImage& k, const Kallsyms& symbols, std::string_view banner) {
  const KernelSpace& s = k.space();
  if (s.levels() != 4 && s.levels() != 5) fuzz::invariant_failed("4 or 5 paging levels", std::to_string(s.levels()));
  if (s.phys_base() % kPhysicalAlign != 0) fuzz::invariant_failed("phys_base is 2 MiB aligned", hex(s.phys_base()));
  const uint64_t linux_banner = *symbols.find("linux_banner");
  const auto pa = s.to_physical(linux_banner);
  if (!pa || *pa != s.image_to_physical(linux_banner))
    fuzz::invariant_failed("init_top_pgt maps linux_banner to its place in the image", hex(linux_banner));
  while (!banner.empty() && (banner.back() == '\n' || banner.back() == '\0')) banner.remove_suffix(1);
  const uint8_t* text = s.physical()->view(*pa, banner.size());
  if (!text || std::string_view(reinterpret_cast<const char*>(text), banner.size()) != banner)
    fuzz::invariant_failed("the image holds the banner at linux_banner", hex(*pa));
}

void check_tasks(const KernelImage& k, const std::vector<Task>& tasks, uint64_t init_task) {
  if (tasks.size() > kMaxTasks) fuzz::invariant_failed("at most kMaxTasks tasks", std::to_string(tasks.size()));
  if (!tasks.empty() && tasks[0].address != init_task) fuzz::invariant_failed("init_task comes first", hex(tasks[0].address));
  std::set<uint64_t> seen;
  for (const Task& t : tasks) {
    if (!seen.insert(t.address).second) fuzz::invariant_failed("no task is listed twice", hex(t.address));
    if (t.comm.size() > 64 || t.comm.find('\0') != std::string::npos)
      fuzz::invariant_failed("comm is a short string", hex(t.address));
    if (t.mm == 0 && (t.pgd || t.pgd_physical)) fuzz::invariant_failed("a kernel thread has no page tables", hex(t.address));
    if (t.pgd_physical) {
      const auto pa = k.space().to_physical(t.pgd);
      if (!pa || *pa != t.pgd_physical) fuzz::invariant_failed("pgd_physical is mm->pgd's frame", hex(t.address));
    }
  }
}

void check_vmas(const std::vector<Vma>& vmas) {
  if (vmas.size() > kMaxVmas) fuzz::invariant_failed("at most kMaxVmas VMAs", std::to_string(vmas.size()));
  for (size_t i = 0; i < vmas.size(); ++i) {
    const Vma& v = vmas[i];
    if (v.start >= v.end || v.start % kPageSize || v.end % kPageSize)
      fuzz::invariant_failed("a VMA is a non-empty range of whole pages", hex(v.start) + "-" + hex(v.end));
    if (i > 0 && vmas[i - 1].start > v.start) fuzz::invariant_failed("VMAs are in address order", hex(v.start));
    if (v.path.size() > kMaxPathBytes + 1024) fuzz::invariant_failed("a path is bounded", hex(v.address));
    if (v.perms().size() != 4) fuzz::invariant_failed("perms are four letters", v.perms());
  }
}

// One address of a process's memory against the page tables' own answer.
void check_address(const PageTableLayer& mem, uint64_t va) {
  const auto t = mem.translate(va);
  const bool mapped = mem.is_mapped(va, 1);
  if (!t) {
    if (mapped) fuzz::invariant_failed("a non-canonical address is not mapped", hex(va));
    return;
  }
  const bool user = va < mem.limit();
  const bool backed = t->state == PageState::kPresent && mem.physical().is_mapped(t->physical_of(va), 1);
  if (mapped != (user && backed))
    fuzz::invariant_failed("a byte is mapped exactly when its page is present and its frame in the image",
                           hex(va) + " " + page_state_name(t->state));
  if (t->vstart > va || va - t->vstart >= t->size) fuzz::invariant_failed("a translation covers its address", hex(va));
  if (!mapped) return;
  uint8_t mine = 0, theirs = 0;
  if (!mem.read(va, &mine, 1) || !mem.physical().read(t->physical_of(va), &theirs, 1) || mine != theirs)
    fuzz::invariant_failed("a mapped byte is the image's byte at its frame", hex(va));
  const uint64_t run = mem.mapped_run(va, 3 * kPageSize);
  if (run == 0 || run > 3 * kPageSize || va + run > mem.limit())
    fuzz::invariant_failed("mapped_run stays within its maximum and the user half", hex(va));
  std::vector<uint8_t> buf(run);
  if (!mem.read(va, buf.data(), run)) fuzz::invariant_failed("a mapped run can be read", hex(va) + " +" + hex(run));
  const auto last = mem.translate(va + run - 1);
  if (!last || last->state != PageState::kPresent ||
      !mem.physical().read(last->physical_of(va + run - 1), &theirs, 1) || theirs != buf[run - 1])
    fuzz::invariant_failed("a run's last byte is the image's byte at its frame", hex(va + run - 1));
}

// count_pages() of [start, end) against translate(), page by page.
void check_counts(const PageTableLayer& mem, uint64_t start, uint64_t end, Diagnostics& diag) {
  const uint64_t pages = (end - start) / kPageSize;
  const PageCounts c = KernelImage::count_pages(mem, start, end, diag);
  PageCounts mine;
  for (uint64_t p = start; p < end; p += kPageSize) {
    const auto t = mem.translate(p);
    if (!t) ++mine.not_present;
    else if (t->state == PageState::kNotPresent) ++mine.not_present;
    else if (t->state == PageState::kSwapped) ++mine.swapped;
    else if (t->state == PageState::kTableNotInImage) ++mine.unknown;
    else if (mem.physical().is_mapped(t->physical_of(p), 1)) ++mine.in_image;
    else ++mine.not_in_image;
  }
  if (c.total() != pages || c.in_image != mine.in_image || c.not_in_image != mine.not_in_image ||
      c.swapped != mine.swapped || c.not_present != mine.not_present || c.unknown != mine.unknown)
    fuzz::invariant_failed("count_pages counts each page once, in the state translate() gives",
                           hex(start) + "-" + hex(end) + ": " + std::to_string(c.in_image) + "/" +
                               std::to_string(mine.in_image) + " in image, " + std::to_string(c.total()) + " of " +
                               std::to_string(pages));
}

void check_process(const KernelImage& k, const Task& t, Diagnostics& diag) {
  const std::vector<Vma> vmas = k.vmas(t, diag);
  check_vmas(vmas);
  auto p = k.process_image(t, diag);
  if (!p) return;
  const auto* mem = dynamic_cast<const PageTableLayer*>(p->memory.get());
  if (!mem) fuzz::invariant_failed("a process's memory is its page tables", std::to_string(t.pid));
  if (mem->limit() != PageTableLayer::user_top(k.space().levels()) || mem->root() != (t.pgd_physical & kPteAddressMask) ||
      mem->levels() != k.space().levels())
    fuzz::invariant_failed("a process's page tables are its own, below the kernel half", std::to_string(t.pid));
  if (p->facts.pid != t.tgid || p->facts.segments != vmas.size() || p->facts.image_bytes % kPageSize)
    fuzz::invariant_failed("a process's facts are its task's", std::to_string(t.pid));
  if (p->facts.args.size() > kMaxPathBytes) fuzz::invariant_failed("the command line is bounded", std::to_string(t.pid));
  const uint64_t top = mem->limit();
  if (mem->is_mapped(top, 1) || mem->view(top - 1, 2) || mem->mapped_run(top - 1, 2) > 1)
    fuzz::invariant_failed("nothing is mapped at or above the user half", hex(top));
  for (size_t i = 0; i < vmas.size() && i < kMaxVmasChecked; ++i) {
    const Vma& v = vmas[i];
    for (uint64_t va : {v.start, v.start + kPageSize, v.start + (v.end - v.start) / 2, v.end - kPageSize, v.end - 1})
      if (va >= v.start && va < v.end) check_address(*mem, va);
    // The VMA's first and last pages (all of a small one).
    const uint64_t window = std::min(v.end - v.start, kMaxPagesRecounted * kPageSize);
    check_counts(*mem, v.start, v.start + window, diag);
    if (window < v.end - v.start) check_counts(*mem, v.end - window, v.end, diag);
  }
}

void run(const uint8_t* data, size_t size) {
  const std::string_view lime = take(data, size), kallsyms = take(data, size), btf = take(data, size);
  const std::string_view banner(reinterpret_cast<const char*>(data), size);
  auto file = std::make_shared<fuzz::MemoryLayer>(std::vector<uint8_t>(lime.begin(), lime.end()));
  auto image = layers::LimeLayer::open(file);
  if (!image) return;
  auto k = KernelImage::open(std::shared_ptr<const layers::SegmentedLayer>(std::move(*image)), kallsyms, btf, banner);
  if (!k) return;
  const auto symbols = Kallsyms::parse(kallsyms);
  if (!symbols || !symbols->find("linux_banner") || !symbols->find("init_task"))
    fuzz::invariant_failed("an open kernel has its kallsyms", "");
  check_kernel(**k, *symbols, banner);
  Diagnostics diag;
  const std::vector<Task> tasks = (*k)->tasks(diag);
  check_tasks(**k, tasks, *symbols->find("init_task"));
  size_t processes = 0;
  for (const Task& t : tasks) {
    if (t.mm == 0) {
      if (!(*k)->vmas(t, diag).empty() || (*k)->process_image(t, diag))
        fuzz::invariant_failed("a kernel thread has no VMAs nor process", hex(t.address));
      continue;
    }
    if (++processes > kMaxProcessesChecked) break;
    check_process(**k, t, diag);
  }
  if (tasks.size() <= 64) {
    Diagnostics list_diag;
    (void)process_list(**k, list_diag).dump(-1, ' ', false, json::Json::error_handler_t::replace);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run(data, size);
  return 0;
}
