// Fuzzes the safetensors reader (analyzer/exporters/safetensors_reader.h) on untrusted files:
// the analyst's clean data sets and reference outputs for `mlfx scan` and `mlfx rehost --verify`
// come from outside the tool.
//
// Invariants: every tensor of a file that parses has a dtype, a byte range inside the data
// section whose length is its element count times the item size, and is found by its name;
// what parses writes out again (safetensors_header + the tensors back to back) into a file
// that parses to the same names, dtypes, shapes, bytes and metadata.
#include <cstdint>
#include <string>
#include <vector>

#include "exporters/safetensors_reader.h"
#include "fuzz_support.h"
#include "safetensors_bytes.h"
#include "mlfx/base/bytes.h"

namespace {

using namespace mlfx;
using exporters::SafetensorsFile;

std::string describe(const exporters::SafetensorsTensor& t) {
  std::string s = t.name + " " + std::string(t.dtype ? t.dtype->safetensors_name : "?") + " [";
  for (int64_t d : t.shape) s += std::to_string(d) + ",";
  return s + "] " + std::to_string(t.begin) + ".." + std::to_string(t.end);
}

void check_tensors(const SafetensorsFile& f) {
  for (const auto& t : f.tensors()) {
    if (!t.dtype) fuzz::invariant_failed("every tensor has a dtype", t.name);
    if (t.begin > t.end || t.end > f.data_bytes())
      fuzz::invariant_failed("byte ranges lie in the data section", describe(t));
    unsigned __int128 n = t.dtype->item_size;
    for (int64_t d : t.shape) {
      if (d < 0) fuzz::invariant_failed("sizes are not negative", describe(t));
      n *= static_cast<uint64_t>(d);
      if (n > (unsigned __int128)UINT64_MAX) fuzz::invariant_failed("sizes do not overflow", describe(t));
    }
    if (n != t.end - t.begin) fuzz::invariant_failed("a range is numel x item size", describe(t));
    if (f.data(t).size() != t.end - t.begin) fuzz::invariant_failed("data() is the range", describe(t));
    if (f.find(t.name) != &t) fuzz::invariant_failed("find() gives the tensor", describe(t));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = SafetensorsFile::parse(std::vector<uint8_t>(data, data + size), "fuzz input");
  if (!f) return 0;
  check_tensors(*f);

  // Written out again and read back.
  std::vector<exporters::TensorRecord> records;
  for (const auto& t : f->tensors()) {
    auto r = fuzz::contiguous_tensor(t.name, t.dtype->scalar_type, t.shape, f->data(t), records.size() + 1);
    if (!r) return 0;
    records.push_back(std::move(*r));
  }
  auto again = fuzz::safetensors_bytes(records, f->metadata());
  if (!again) fuzz::invariant_failed("what parses writes out again", again.error().to_string());
  auto g = SafetensorsFile::parse(std::move(*again), "rewritten");
  if (!g) fuzz::invariant_failed("a rewritten file parses", g.error().to_string());
  check_tensors(*g);
  if (g->tensors().size() != f->tensors().size() || g->metadata() != f->metadata())
    fuzz::invariant_failed("the rewritten file has the same tensors and metadata", "");
  for (const auto& t : f->tensors()) {
    const auto* u = g->find(t.name);
    if (!u || u->dtype != t.dtype || u->shape != t.shape || !std::ranges::equal(g->data(*u), f->data(t)))
      fuzz::invariant_failed("the rewritten tensor is the same", describe(t));
  }
  return 0;
}
