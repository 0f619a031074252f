// Fuzzes the CPython object reader and the torch walkers over a synthetic address space.
//
// Input: a 64-byte header, then a memory blob mapped at kBase through a SegmentedLayer over a
// memory-backed Layer. Header (little-endian u64 words):
//   w0..w6  object addresses to read (0: unused), e.g. a type, a str, an int, a dict
//   w7      flags: bit 0 splits the blob into two adjacent segments at byte (w7 >> 8) & 0xffffff
//           (reads across the boundary go through Layer::read's joining path); bits 1-3 pick
//           the CPython layout table: 0 is 3.11, k > 0 the (k-1)th of all tables, oldest first
// With that layout, every address is read as a type and as every kind of object
// (type_info, has_base, str, integer, real, tuple/list/set items, dict items, str_dict,
// instance_dict, plain_value), then ModuleWalker scans the header addresses plus every
// aligned word of the blob that points into it, and the module trees and tensors are read.
//
// Invariants beyond "no crash, leak or hang": what is read must fit in what is mapped (a tuple
// of n items needs 8n mapped bytes...), and a cached type is returned again unchanged.
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "frontends/cpython/layout.h"
#include "frontends/cpython/python_objects.h"
#include "fuzz_support.h"
#include "image_walk.h"
#include "layers/segmented_layer.h"
#include "synthetic_image.h"

namespace {

using namespace mlfx;
using frontends::cpython::ObjectReader;

constexpr uint64_t kBase = 0x10000;
constexpr size_t kHeader = 64;
constexpr size_t kMaxCandidates = 4096;

void read_everything(const ObjectReader& r, uint64_t a, uint64_t mapped) {
  if (auto t = r.type_info(a); t) {
    auto again = r.type_info(a);
    if (!again || *again != *t) fuzz::invariant_failed("type_info is cached", std::to_string(a));
    if ((*t)->mro.empty() || (*t)->mro.size() > 256) fuzz::invariant_failed("an MRO has 1..256 entries", (*t)->name);
    (void)(*t)->full_name();
  }
  (void)r.has_base(a, "torch.nn.modules.module", "Module");
  (void)r.type_info_of(a);
  (void)r.is_none(a);
  if (auto s = r.str(a); s && s->size() > 4 * mapped) fuzz::invariant_failed("str fits in memory", std::to_string(a));
  if (auto i = r.integer(a); i) (void)i->dump(-1, ' ', false, json::Json::error_handler_t::replace);
  (void)r.real(a);
  if (auto v = r.tuple_items(a); v && v->size() * 8 > mapped) fuzz::invariant_failed("tuple fits in memory", "");
  if (auto v = r.list_items(a); v && v->size() * 8 > mapped) fuzz::invariant_failed("list fits in memory", "");
  if (auto v = r.set_items(a); v && v->size() * 16 > mapped) fuzz::invariant_failed("set fits in memory", "");
  if (auto v = r.dict_items(a); v && v->size() * 16 > mapped) fuzz::invariant_failed("dict fits in memory", "");
  (void)r.str_dict(a);
  (void)r.instance_dict(a);
  if (auto p = r.plain_value(a); p && *p) (void)(*p)->dump(-1, ' ', false, json::Json::error_handler_t::replace);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader + 8) return 0;
  uint64_t w[8];
  std::memcpy(w, data, sizeof w);
  std::vector<uint8_t> blob(data + kHeader, data + size);
  const uint64_t n = blob.size();

  std::vector<layers::Segment> segments;
  const uint64_t cut = (w[7] >> 8) & 0xffffff;
  if ((w[7] & 1) && cut > 0 && cut < n) {
    segments.push_back({kBase, cut, 0});
    segments.push_back({kBase + cut, n - cut, cut});
  } else {
    segments.push_back({kBase, n, 0});
  }
  auto base = std::make_shared<fuzz::MemoryLayer>(std::move(blob));
  auto mem = layers::SegmentedLayer::create("fuzz process", base, segments);
  if (!mem) fuzz::invariant_failed("the harness's segments are valid", mem.error().to_string());
  const layers::Layer& m = **mem;

  size_t tables = 0;
  const auto* const* all = frontends::cpython::all_layouts(tables);
  const size_t pick = (w[7] >> 1) & 7;
  const auto* layout = pick ? all[(pick - 1) % tables] : frontends::cpython::layout_for(0x030B0200);
  if (!layout) fuzz::invariant_failed("CPython 3.11 has a layout table", "");
  Diagnostics diag;
  ObjectReader reader(m, *layout, diag);
  for (int i = 0; i < 7; ++i)
    if (w[i]) read_everything(reader, w[i], n);

  // Candidates: the header's addresses, then every aligned word that points into the blob.
  std::vector<uint64_t> candidates;
  std::set<uint64_t> seen;
  auto add = [&](uint64_t a) {
    if (candidates.size() < kMaxCandidates && seen.insert(a).second) candidates.push_back(a);
  };
  for (int i = 0; i < 7; ++i)
    if (w[i]) add(w[i]);
  const uint8_t* words = data + kHeader;
  for (size_t off = 0; off + 8 <= n; off += 8) {
    uint64_t v;
    std::memcpy(&v, words + off, 8);
    if (v >= kBase + 16 && v < kBase + n) add(v);
  }
  fuzz::walk_modules(reader, candidates, diag);
  return 0;
}
