#include "physical/physical_image.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "mlfx/base/bytes.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::physical {

namespace {

constexpr uint64_t kMaxPageSize = 1u << 16;

Error bad_context(const std::string& what) {
  return Error(Errc::kBadFormat, "capture context: " + what);
}

// Typed fields of a hostile JSON object: a missing or mistyped field is an error naming it.
Result<uint64_t> get_u64(const json::Json& o, const char* key, const std::string& where) {
  const auto it = o.find(key);
  if (it == o.end() || !it->is_number_unsigned()) return fail(bad_context(where + "." + key + " is not an unsigned integer"));
  return it->get<uint64_t>();
}
Result<std::string> get_string(const json::Json& o, const char* key, const std::string& where, size_t max = 4096) {
  const auto it = o.find(key);
  if (it == o.end() || !it->is_string()) return fail(bad_context(where + "." + key + " is not a string"));
  std::string s = it->get<std::string>();
  if (s.size() > max) return fail(bad_context(where + "." + key + " is longer than " + std::to_string(max) + " bytes"));
  return s;
}
std::string opt_string(const json::Json& o, const char* key, size_t max = 4096) {
  const auto it = o.find(key);
  if (it == o.end() || !it->is_string()) return "";
  std::string s = it->get<std::string>();
  return s.substr(0, max);
}
const json::Json* get_array(const json::Json& o, const char* key) {
  const auto it = o.find(key);
  return it != o.end() && it->is_array() ? &*it : nullptr;
}

Result<ContextMapping> parse_mapping(const json::Json& m, const std::string& where) {
  if (!m.is_object()) return fail(bad_context(where + " is not an object"));
  ContextMapping c;
  MLFX_ASSIGN(c.start, get_u64(m, "start", where));
  MLFX_ASSIGN(c.end, get_u64(m, "end", where));
  if (c.end <= c.start) return fail(bad_context(where + " ends before it starts"));
  MLFX_ASSIGN(c.perms, get_string(m, "perms", where, 8));
  if (m.contains("offset")) {
    MLFX_ASSIGN(c.offset, get_u64(m, "offset", where));
  }
  if (m.contains("inode")) {
    MLFX_ASSIGN(c.inode, get_u64(m, "inode", where));
  }
  c.path = opt_string(m, "path");
  if (m.contains("build_id")) {
    MLFX_ASSIGN(c.build_id, get_string(m, "build_id", where, 128));
    const bool hex = !c.build_id.empty() && c.build_id.size() % 2 == 0 &&
                     std::all_of(c.build_id.begin(), c.build_id.end(),
                                 [](char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'); });
    if (!hex) return fail(bad_context(where + ".build_id is not a build-id in lowercase hex"));
  }
  return c;
}

Result<ContextProcess> parse_process(const json::Json& p, const std::string& where) {
  if (!p.is_object()) return fail(bad_context(where + " is not an object"));
  ContextProcess c;
  MLFX_ASSIGN(uint64_t pid, get_u64(p, "pid", where));
  if (pid == 0 || pid > INT32_MAX) return fail(bad_context(where + ".pid is out of range"));
  c.pid = static_cast<int32_t>(pid);
  c.comm = opt_string(p, "comm", 64);
  c.cmdline = opt_string(p, "cmdline");
  if (p.contains("threads")) {
    MLFX_ASSIGN(c.threads, get_u64(p, "threads", where));
  }
  if (p.contains("pages_moved")) {
    MLFX_ASSIGN(c.pages_moved, get_u64(p, "pages_moved", where));
  }
  if (const json::Json* maps = get_array(p, "maps"))
    for (size_t i = 0; i < maps->size(); ++i) {
      MLFX_ASSIGN(ContextMapping m, parse_mapping((*maps)[i], where + ".maps[" + std::to_string(i) + "]"));
      c.maps.push_back(std::move(m));
    }
  if (const json::Json* samples = get_array(p, "page_sample"))
    for (size_t i = 0; i < samples->size(); ++i) {
      const std::string at = where + ".page_sample[" + std::to_string(i) + "]";
      const json::Json& s = (*samples)[i];
      if (!s.is_object()) return fail(bad_context(at + " is not an object"));
      PageSample sample;
      MLFX_ASSIGN(sample.vaddr, get_u64(s, "vaddr", at));
      MLFX_ASSIGN(sample.sha256, get_string(s, "sha256", at, 64));
      c.page_sample.push_back(std::move(sample));
    }
  return c;
}

// Where physical address `paddr` lies in the image file, for `len` bytes within one range.
std::optional<uint64_t> file_offset(const std::vector<layers::Segment>& ranges, uint64_t paddr, uint64_t len) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), paddr,
                             [](uint64_t a, const layers::Segment& s) { return a < s.start; });
  if (it == ranges.begin()) return std::nullopt;
  --it;
  if (paddr - it->start > it->size || len > it->size - (paddr - it->start)) return std::nullopt;
  return it->base_offset + (paddr - it->start);
}

// Two evidence files one after the other: [0, size of a) is a, then b. Process layers map
// their pages onto the image and onto the pages read from the process (stream moved) alike.
class ConcatLayer final : public layers::Layer {
 public:
  ConcatLayer(std::shared_ptr<const layers::Layer> a, uint64_t a_size, std::shared_ptr<const layers::Layer> b)
      : a_(std::move(a)), b_(std::move(b)), a_size_(a_size), name_(a_->name() + " + " + b_->name()) {}
  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override {
    if (addr < a_size_) return len <= a_size_ - addr ? a_->view(addr, len) : nullptr;
    return b_->view(addr - a_size_, len);
  }
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override {
    if (addr < a_size_) return a_->mapped_run(addr, std::min(max, a_size_ - addr));
    return b_->mapped_run(addr - a_size_, max);
  }
  std::optional<FilePlace> file_place(uint64_t addr, uint64_t len) const override {
    if (addr < a_size_) return len <= a_size_ - addr ? a_->file_place(addr, len) : std::nullopt;
    return b_->file_place(addr - a_size_, len);
  }

 private:
  std::shared_ptr<const layers::Layer> a_, b_;
  uint64_t a_size_;
  std::string name_;
};

uint16_t elf_machine_of(const std::string& machine) {
  if (machine == "x86_64") return EM_X86_64;
  if (machine == "aarch64") return EM_AARCH64;
  return EM_NONE;
}

// The image's ranges less the bytes the tool zero-filled (LiME pads a range that ends inside a
// page with zeros): those addresses become absent.
Result<std::shared_ptr<const layers::SegmentedLayer>> without_zero_filled(const layers::LimeLayer& lime,
                                                                          std::shared_ptr<const layers::Layer> file,
                                                                          std::vector<PhysicalRange> zeros) {
  std::sort(zeros.begin(), zeros.end(), [](const PhysicalRange& a, const PhysicalRange& b) { return a.start < b.start; });
  std::vector<layers::Segment> kept;
  size_t first = 0;  // both sorted: one pass over each
  for (const layers::Segment& s : lime.segments()) {
    const uint64_t last = s.start + s.size - 1;
    while (first < zeros.size() && zeros[first].end < s.start) ++first;
    uint64_t at = s.start;
    bool done = false;
    for (size_t k = first; k < zeros.size() && zeros[k].start <= last && !done; ++k) {
      const PhysicalRange& z = zeros[k];
      if (z.end < at) continue;
      if (z.start > at) kept.push_back({at, z.start - at, s.base_offset + (at - s.start)});
      done = z.end >= last;
      if (!done) at = z.end + 1;
    }
    if (!done) kept.push_back({at, last - at + 1, s.base_offset + (at - s.start)});
  }
  MLFX_ASSIGN(std::unique_ptr<layers::SegmentedLayer> layer,
              layers::SegmentedLayer::create(lime.name() + " less zero-filled bytes", std::move(file), std::move(kept)));
  return std::shared_ptr<const layers::SegmentedLayer>(std::move(layer));
}

}  // namespace

Result<std::vector<PagemapRecord>> parse_pagemap(const layers::Layer& stream, uint64_t page_size) {
  const std::string& name = stream.name();
  const uint64_t size = stream.mapped_run(0, UINT64_MAX);
  auto bad = [&](std::string what, uint64_t offset) {
    return fail(Error(Errc::kBadFormat, "pagemap stream: " + std::move(what)).at({name, std::nullopt, offset}));
  };
  const uint8_t* h = stream.view(0, kPagemapHeaderSize);
  if (!h) return bad("shorter than its header", 0);
  if (std::memcmp(h, kPagemapMagic.data(), kPagemapMagic.size()) != 0) return bad("no MLFXPMAP magic", 0);
  if (load_le<uint32_t>(h + 8) != kPagemapVersion)
    return bad("version " + std::to_string(load_le<uint32_t>(h + 8)) + " (only version 1 is known)", 8);
  const uint32_t count = load_le<uint32_t>(h + 12);
  if (count > kPagemapMaxRecords) return bad(std::to_string(count) + " records (at most 2^20)", 12);
  std::vector<PagemapRecord> records;
  records.reserve(std::min<uint64_t>(count, size / kPagemapRecordHeaderSize));
  uint64_t offset = kPagemapHeaderSize;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* r = stream.view(offset, kPagemapRecordHeaderSize);
    if (!r) return bad("record " + std::to_string(i) + " of " + std::to_string(count) + " is cut short", offset);
    PagemapRecord rec;
    const uint32_t pid = load_le<uint32_t>(r);
    rec.start = load_le<uint64_t>(r + 8);
    rec.pages = load_le<uint64_t>(r + 16);
    if (pid == 0 || pid > INT32_MAX) return bad("record " + std::to_string(i) + ": pid out of range", offset);
    rec.pid = static_cast<int32_t>(pid);
    if (rec.start % page_size) return bad("record " + std::to_string(i) + ": start " + hex_address(rec.start) + " is not page-aligned", offset);
    const uint64_t data = offset + kPagemapRecordHeaderSize;
    if (rec.pages > (size - std::min(size, data)) / 8)
      return bad("record " + std::to_string(i) + ": " + std::to_string(rec.pages) + " entries run past the end of the stream", offset);
    if (rec.pages == 0 || rec.pages > (UINT64_MAX - rec.start) / page_size)
      return bad("record " + std::to_string(i) + ": " + std::to_string(rec.pages) + " pages from " + hex_address(rec.start) +
                     " is empty or wraps the address space", offset);
    rec.entries_offset = data;
    records.push_back(rec);
    offset = data + rec.pages * 8;
  }
  if (offset != size) return bad(std::to_string(size - offset) + " bytes after the last record", offset);
  return records;
}

Result<std::vector<MovedPage>> parse_moved(const layers::Layer& stream, uint64_t page_size) {
  const uint64_t size = stream.mapped_run(0, UINT64_MAX);
  auto bad = [&](std::string what, uint64_t offset) {
    return fail(Error(Errc::kBadFormat, "moved stream: " + std::move(what)).at({stream.name(), std::nullopt, offset}));
  };
  const uint8_t* h = stream.view(0, 16);
  if (!h) return bad("shorter than its header", 0);
  if (std::memcmp(h, kMovedMagic.data(), kMovedMagic.size()) != 0) return bad("no MLFXMOVD magic", 0);
  if (load_le<uint32_t>(h + 8) != kMovedVersion)
    return bad("version " + std::to_string(load_le<uint32_t>(h + 8)) + " (only version 1 is known)", 8);
  const uint32_t count = load_le<uint32_t>(h + 12);
  const uint64_t record = 16 + page_size;
  if (count > kMovedMaxPages || count != (size - 16) / record || (size - 16) % record)
    return bad(std::to_string(count) + " pages do not fill the stream's " + std::to_string(size) + " bytes", 12);
  std::vector<MovedPage> pages;
  pages.reserve(count);
  for (uint64_t i = 0, at = 16; i < count; ++i, at += record) {
    const uint8_t* r = stream.view(at, 16);
    const uint32_t pid = load_le<uint32_t>(r);
    const uint64_t vaddr = load_le<uint64_t>(r + 8);
    if (pid == 0 || pid > INT32_MAX) return bad("page " + std::to_string(i) + ": pid out of range", at);
    if (vaddr % page_size || vaddr > UINT64_MAX - page_size)
      return bad("page " + std::to_string(i) + ": " + hex_address(vaddr) + " is not a page", at);
    pages.push_back({static_cast<int32_t>(pid), vaddr, at + 16});
  }
  return pages;
}

const ContextProcess* PhysicalContext::find(int32_t pid) const {
  for (const auto& p : processes)
    if (p.pid == pid) return &p;
  return nullptr;
}

Result<PhysicalContext> parse_context(std::string_view text) {
  json::Json doc = json::Json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return fail(bad_context("not a JSON object"));
  PhysicalContext c;
  c.source = opt_string(doc, "source", 64);
  const auto kernel = doc.find("kernel");
  if (kernel == doc.end() || !kernel->is_object()) return fail(bad_context("no 'kernel' object"));
  MLFX_ASSIGN(c.banner, get_string(*kernel, "banner", "kernel", 1024));
  c.release = opt_string(*kernel, "release", 256);
  c.machine = opt_string(*kernel, "machine", 64);
  MLFX_ASSIGN(c.page_size, get_u64(*kernel, "page_size", "kernel"));
  if (c.page_size < 4096 || c.page_size > kMaxPageSize || (c.page_size & (c.page_size - 1)))
    return fail(bad_context("kernel.page_size " + std::to_string(c.page_size) + " is not a page size"));
  if (const json::Json* zeros = get_array(doc, "zero_filled"))
    for (size_t i = 0; i < zeros->size(); ++i) {
      const std::string at = "zero_filled[" + std::to_string(i) + "]";
      if (!(*zeros)[i].is_object()) return fail(bad_context(at + " is not an object"));
      PhysicalRange r;
      MLFX_ASSIGN(r.start, get_u64((*zeros)[i], "start", at));
      MLFX_ASSIGN(r.end, get_u64((*zeros)[i], "end", at));
      if (r.end < r.start) return fail(bad_context(at + " ends before it starts"));
      c.zero_filled.push_back(r);
    }
  if (const json::Json* procs = get_array(doc, "processes"))
    for (size_t i = 0; i < procs->size(); ++i) {
      MLFX_ASSIGN(ContextProcess p, parse_process((*procs)[i], "processes[" + std::to_string(i) + "]"));
      if (c.find(p.pid)) return fail(bad_context("pid " + std::to_string(p.pid) + " is listed twice"));
      c.processes.push_back(std::move(p));
    }
  c.document = std::move(doc);
  return c;
}

json::Json RebuiltProcess::to_json() const {
  return {{"pages_in_image", pages.in_image}, {"pages_not_in_image", pages.not_in_image},
          {"pages_swapped", pages.swapped}, {"pages_not_present", pages.not_present},
          {"pages_pfn_hidden", pages.pfn_hidden},
          {"file_pages_not_present", pages.file_not_present},
          {"pages_moved_during_capture", pages_moved},
          {"pages_moved_read_from_process", pages_moved_supplied},
          {"page_sample", {{"pages", samples_total}, {"matched", samples_checked},
                           {"not_in_image", samples_total - samples_checked}}}};
}

Result<PhysicalImage> PhysicalImage::open(std::shared_ptr<const layers::Layer> memory, std::string_view context_text,
                                          std::shared_ptr<const layers::Layer> pagemap,
                                          std::shared_ptr<const layers::Layer> moved) {
  PhysicalImage img;
  MLFX_ASSIGN(img.context_, parse_context(context_text));
  MLFX_ASSIGN(std::unique_ptr<layers::LimeLayer> lime, layers::LimeLayer::open(memory));
  if (img.context_.zero_filled.empty()) {
    img.physical_ = std::move(lime);
  } else {
    MLFX_ASSIGN(img.physical_, without_zero_filled(*lime, memory, img.context_.zero_filled));
  }
  img.memory_ = std::move(memory);
  if (pagemap) {
    MLFX_ASSIGN(img.records_, parse_pagemap(*pagemap, img.context_.page_size));
    for (const PagemapRecord& r : img.records_)
      if (!img.context_.find(r.pid))
        return fail(Errc::kBadFormat, "pagemap stream: pid " + std::to_string(r.pid) + " is not among the context's processes");
    img.pagemap_ = std::move(pagemap);
  }
  img.memory_size_ = img.memory_->mapped_run(0, UINT64_MAX);
  img.evidence_ = img.memory_;
  if (moved) {
    MLFX_ASSIGN(img.moved_, parse_moved(*moved, img.context_.page_size));
    for (const MovedPage& m : img.moved_)
      if (!img.context_.find(m.pid))
        return fail(Errc::kBadFormat, "moved stream: pid " + std::to_string(m.pid) + " is not among the context's processes");
    img.evidence_ = std::make_shared<ConcatLayer>(img.memory_, img.memory_size_, std::move(moved));
  }
  return img;
}

std::vector<int32_t> PhysicalImage::pids_with_pagemap() const {
  std::vector<int32_t> pids;
  for (const ContextProcess& p : context_.processes)
    if (std::any_of(records_.begin(), records_.end(), [&](const PagemapRecord& r) { return r.pid == p.pid; }))
      pids.push_back(p.pid);
  return pids;
}

Status PhysicalImage::check_banner() const {
  std::string banner = context_.banner;
  while (!banner.empty() && (banner.back() == '\n' || banner.back() == '\0')) banner.pop_back();
  if (banner.size() < 16) return fail(bad_context("kernel.banner is too short to identify a kernel"));
  // Range by range: a banner never spans two RAM ranges.
  for (const layers::Segment& s : physical_->segments()) {
    const uint8_t* p = memory_->view(s.base_offset, s.size);
    if (p && memmem(p, s.size, banner.data(), banner.size())) return {};
  }
  return fail(Errc::kBadFormat,
              "the capture context does not belong to this image: its kernel banner (\"" + banner.substr(0, 80) +
                  "...\") does not occur in the physical image");
}

Result<RebuiltProcess> PhysicalImage::process(int32_t pid) const {
  const ContextProcess* cp = context_.find(pid);
  if (!cp) return fail(Errc::kNotFound, "pid " + std::to_string(pid) + " is not among the processes the capture context describes");
  const uint64_t ps = context_.page_size;
  const std::vector<layers::Segment>& ranges = physical_->segments();
  RebuiltProcess out;
  std::vector<layers::Segment> segments;
  std::vector<layers::AddressRange> declared;
  bool any = false;
  for (const PagemapRecord& r : records_) {
    if (r.pid != pid) continue;
    any = true;
    const bool file_backed = std::any_of(cp->maps.begin(), cp->maps.end(), [&](const ContextMapping& m) {
      return m.start == r.start && m.inode != 0 && !m.path.empty() && m.path.front() == '/';
    });
    const uint8_t* entries = pagemap_->view(r.entries_offset, r.pages * 8);
    if (!entries) return fail(Errc::kBadFormat, "pagemap stream: the entries of pid " + std::to_string(pid) + " cannot be read");
    for (uint64_t i = 0; i < r.pages; ++i) {
      const uint64_t e = load_le<uint64_t>(entries + i * 8);
      if (e & (kPagePresent | kPageSwapped))  // the evidence speaks for it, held or not
        layers::append_range(declared, r.start + i * ps, r.start + (i + 1) * ps);
      if (!(e & kPagePresent)) {
        ++((e & kPageSwapped) ? out.pages.swapped : out.pages.not_present);
        if (file_backed && !(e & kPageSwapped)) ++out.pages.file_not_present;
        continue;
      }
      const uint64_t pfn = e & kPfnMask;
      if (pfn == 0) {
        ++out.pages.pfn_hidden;
        continue;
      }
      if (pfn > UINT64_MAX / ps) {
        ++out.pages.not_in_image;
        continue;
      }
      const std::optional<uint64_t> at = file_offset(ranges, pfn * ps, ps);
      if (!at) {
        ++out.pages.not_in_image;
        continue;
      }
      ++out.pages.in_image;
      const uint64_t vaddr = r.start + i * ps;
      layers::Segment* last = segments.empty() ? nullptr : &segments.back();
      if (last && last->start + last->size == vaddr && last->base_offset + last->size == *at)
        last->size += ps;  // contiguous in both: one segment
      else
        segments.push_back({vaddr, ps, *at});
    }
  }
  for (const MovedPage& m : moved_)  // read from the frozen process: its pagemap entry was zeroed
    if (m.pid == pid) {
      segments.push_back({m.vaddr, ps, memory_size_ + m.data_offset});
      declared.push_back({m.vaddr, m.vaddr + ps});
      ++out.pages_moved_supplied;
    }
  if (!any)
    return fail(Errc::kNotFound, "the capture holds no pagemap for pid " + std::to_string(pid) +
                                     " (captured without --pid " + std::to_string(pid) + "?)");
  if (out.pages.in_image == 0 && out.pages.pfn_hidden)
    return fail(Errc::kUnsupported, "the pagemap of pid " + std::to_string(pid) +
                                        " holds no page frame numbers (read without CAP_SYS_ADMIN): it cannot be placed in the image");
  const size_t nsegments = segments.size();
  MLFX_ASSIGN(std::unique_ptr<layers::SegmentedLayer> layer,
              layers::SegmentedLayer::create("pid " + std::to_string(pid) + " (pagemap over " + memory_->name() + ")",
                                             evidence_, std::move(segments)));

  // The sample hashed at acquisition must hash the same here: else context and image differ.
  size_t& checked = out.samples_checked;
  std::vector<uint8_t> page(ps);
  for (const PageSample& s : cp->page_sample) {
    if (s.vaddr % ps || !layer->is_mapped(s.vaddr, ps)) continue;  // a hole: not evidence either way
    MLFX_TRY(layer->read(s.vaddr, page.data(), ps));
    if (crypto::sha256_hex(ByteView(page.data(), ps)) != s.sha256)
      return fail(Errc::kBadFormat, "the capture context does not belong to this image: the page of pid " +
                                        std::to_string(pid) + " at " + hex_address(s.vaddr) +
                                        " hashed at acquisition differs from that page in the image");
    ++checked;
  }
  out.samples_total = cp->page_sample.size();
  out.pages_moved = cp->pages_moved;
  if (cp->pages_moved)
    out.image.warnings.push_back(std::to_string(cp->pages_moved) + " page(s) of pid " + std::to_string(pid) +
                                 " moved while the image was read (the kernel migrated them); " +
                                 std::to_string(out.pages_moved_supplied) + " of them read from the frozen process instead");
  layers::ProcessImage& image = out.image;
  image.kind = "physical image (" + (context_.source.empty() ? std::string("LiME") : context_.source) + ") + pagemap";
  image.memory = std::move(layer);
  std::set<std::string> ambiguous;  // two build-ids for one path: neither is used
  for (const ContextMapping& m : cp->maps) {
    if (m.inode != 0 && !m.path.empty() && m.path.front() == '/') {
      image.mapped_files.push_back({m.start, m.end, m.offset, m.path});
      if (!m.build_id.empty() && !image.build_ids.emplace(m.path, m.build_id).second &&
          image.build_ids[m.path] != m.build_id)
        ambiguous.insert(m.path);
    }
    if (layers::declared_whole(m.perms)) declared.push_back({m.start, m.end});
  }
  image.declared = layers::normalized(std::move(declared));
  for (const std::string& path : ambiguous) {
    image.build_ids.erase(path);
    image.warnings.push_back("the context records two build-ids for " + path + " (pid " + std::to_string(pid) +
                             "): neither is used");
  }
  image.facts.pid = pid;
  image.facts.command = cp->comm;
  image.facts.args = cp->cmdline;
  image.facts.threads = cp->threads;
  image.facts.elf_machine = elf_machine_of(context_.machine);
  image.facts.segments = nsegments;
  image.facts.image_bytes = (out.pages.in_image + out.pages_moved_supplied) * ps;
  if (out.pages.not_in_image)
    image.warnings.push_back(std::to_string(out.pages.not_in_image) + " present page(s) of pid " + std::to_string(pid) +
                             " lie outside the image's ranges (not read, not zeros)");
  if (out.pages.swapped)
    image.warnings.push_back(std::to_string(out.pages.swapped) + " page(s) of pid " + std::to_string(pid) +
                             " were swapped out at acquisition: not in the image");
  if (!cp->page_sample.empty() && checked == 0)
    image.warnings.push_back("none of the " + std::to_string(cp->page_sample.size()) +
                             " sampled pages of pid " + std::to_string(pid) + " is in the image: the pagemap is unchecked");
  return out;
}

}  // namespace mlfx::physical
