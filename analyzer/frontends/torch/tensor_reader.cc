#include "frontends/torch/tensor_reader.h"

#include <cstdio>

namespace mlfx::frontends::torch {

namespace {

constexpr uint64_t kMaxDims = 64;

// Every invariant a tensor read through layout L must hold beyond those read_with() checks:
// its storage holds its extent (at least a byte per element), its device and dtype are in
// range, and, with `need_data`, its data is in the image.
bool whole(const TensorInfo& t, const layers::Layer& mem, bool need_data) {
  if (t.device_type < 0 || t.device_type > 32 || t.scalar_type > 64 || t.storage_offset < 0) return false;
  uint64_t extent = t.numel ? 1 : 0;
  for (size_t i = 0; i < t.sizes.size() && t.numel; ++i) {
    if (t.strides[i] < 0) return false;
    extent += uint64_t(t.sizes[i] - 1) * uint64_t(t.strides[i]);
  }
  if (t.storage_bytes < uint64_t(t.storage_offset) + extent) return false;
  return !need_data || t.storage_bytes == 0 || t.device_type != 0 ||
         mem.is_mapped(t.data, std::min<uint64_t>(t.storage_bytes, 64));
}

}  // namespace

Result<bool> TensorReader::is_tensor_type(uint64_t type) const {
  MLFX_ASSIGN(const cpython::TypeInfo* t, objects_.type_info(type));
  std::vector<uint64_t> mro = t->mro;
  for (uint64_t base : mro) {
    auto b = objects_.type_info(base);
    if (b && !(*b)->heap && ((*b)->name == "torch._C._TensorBase" || (*b)->name == "torch._C.TensorBase"))
      return true;
  }
  return false;
}

// Picks the first table under which the tensor reads back whole; where none does, derives the
// layout from the same invariants (§3.7 of the layout reference): the TensorImpl pointer is
// at THPVariable+16 or +24, the PyObject slot is found by its back-pointer, the members after
// it keep their distances, the storage and its data pointer sit after a vtable and 16 or 24
// bytes of refcounts. A layout that does not fit is never used.
Status TensorReader::calibrate(uint64_t obj) {
  // First with the data in the image (the strongest check), then without: a tensor whose pages
  // the evidence lacks (swapped out, a file mapping not captured) still has a layout.
  if (fits(obj, true) || fits(obj, false)) {
    unsupported_.clear();
    return {};
  }
  unsupported_ = "unsupported: no torch layout table fits the tensor at " + hex_address(obj) +
                 " and none can be derived (no TensorImpl found that points back to it and reads whole): this "
                 "torch build is not supported";
  return fail(Errc::kUnsupported, unsupported_);
}

bool TensorReader::fits(uint64_t obj, bool need_data) {
  const auto& mem = objects_.memory();
  for (const TorchLayout* l : kTorchLayouts) {
    auto t = read_with(*l, obj);
    if (t && whole(*t, mem, need_data)) {
      layout_ = *l;
      layout_name_ = l->name;
      calibrated_ = true;
      return true;
    }
  }
  for (uint32_t thp : {16u, 24u}) {
    auto impl = mem.read_u64(obj + thp);
    if (!impl || !*impl) continue;
    for (uint32_t pyobj = 32; pyobj <= 96; pyobj += 8) {
      auto back = mem.read_u64(*impl + pyobj);
      if (!back || (*back & ~uint64_t(1)) != obj) continue;
      for (uint32_t counts : {16u, 8u}) {  // refcounts after the vtable: two size_t, or packed
        TorchLayout d{};
        d.name = "derived from invariants";  // the offsets found are in layout_name_
        d.thp_impl = thp;
        d.impl_storage = 8 + counts;
        d.impl_pyobj = pyobj;
        d.impl_sizes_and_strides = pyobj + 8;
        d.impl_storage_offset = pyobj + 96;
        d.impl_numel = pyobj + 104;
        d.impl_dtype = pyobj + 112;
        d.storage_data = 8 + counts;
        d.storage_device = d.storage_data + 24;
        d.storage_size_bytes = d.storage_data + 32;
        auto t = read_with(d, obj);
        if (!t || !whole(*t, mem, need_data)) continue;
        layout_ = d;
        layout_name_ = "derived from invariants (no table fits): TensorImpl* at THPVariable+" + std::to_string(thp) +
                       ", PyObject slot at TensorImpl+" + std::to_string(pyobj) + ", storage at TensorImpl+" +
                       std::to_string(d.impl_storage) + ", data at StorageImpl+" + std::to_string(d.storage_data);
        calibrated_ = true;
        return true;
      }
    }
  }
  return false;
}

Result<TensorInfo> TensorReader::read(uint64_t obj) {
  if (!calibrated_) MLFX_TRY(calibrate(obj));
  return read_with(layout_, obj);
}

Result<TensorInfo> TensorReader::read_with(const TorchLayout& L, uint64_t obj) const {
  const auto& mem = objects_.memory();
  TensorInfo t;
  t.object = obj;
  MLFX_ASSIGN(const cpython::TypeInfo* type, objects_.type_info_of(obj));
  t.python_class = type->full_name();  // a view of the reader's type cache
  MLFX_ASSIGN(t.impl, mem.read_u64(obj + L.thp_impl));
  if (!t.impl) return fail(Errc::kBadFormat, "tensor at " + hex_address(obj) + " has no TensorImpl");
  const std::string where = "tensor at " + hex_address(obj);
  MLFX_ASSIGN(uint64_t back, mem.read_u64(t.impl + L.impl_pyobj));
  if ((back & ~uint64_t(1)) != obj)
    return fail(Errc::kCorrupt, where + ": TensorImpl " + hex_address(t.impl) + " does not point back to it");
  MLFX_ASSIGN(uint64_t ndim, mem.read_u64(t.impl + L.impl_sizes_and_strides));
  if (ndim > kMaxDims) return fail(Errc::kCorrupt, where + ": " + std::to_string(ndim) + " dimensions");
  t.sizes.resize(ndim);
  t.strides.resize(ndim);
  uint64_t dims = t.impl + L.impl_sizes_and_strides + 8;
  if (ndim > kInlineDims) {
    MLFX_ASSIGN(dims, mem.read_u64(dims));
  }
  const uint64_t stride_at = ndim > kInlineDims ? dims + 8 * ndim : dims + 8 * kInlineDims;
  if (ndim) {
    MLFX_TRY(mem.read(dims, t.sizes.data(), 8 * ndim));
    MLFX_TRY(mem.read(stride_at, t.strides.data(), 8 * ndim));
  }
  MLFX_ASSIGN(t.storage_offset, mem.read_value<int64_t>(t.impl + L.impl_storage_offset));
  MLFX_ASSIGN(t.numel, mem.read_value<int64_t>(t.impl + L.impl_numel));
  MLFX_ASSIGN(uint16_t dtype, mem.read_value<uint16_t>(t.impl + L.impl_dtype));
  t.scalar_type = dtype;
  int64_t product = 1;
  for (int64_t s : t.sizes) {
    if (s < 0 || (s && product > INT64_MAX / s)) return fail(Errc::kCorrupt, where + ": impossible sizes");
    product *= s;
  }
  if (product != t.numel)
    return fail(Errc::kCorrupt, where + ": numel " + std::to_string(t.numel) + " is not the product of its sizes");
  MLFX_ASSIGN(t.storage, mem.read_u64(t.impl + L.impl_storage));
  if (!t.storage) return fail(Errc::kUnsupported, where + " has no storage (sparse or meta tensor)");
  MLFX_ASSIGN(t.data, mem.read_u64(t.storage + L.storage_data));
  MLFX_ASSIGN(t.storage_bytes, mem.read_u64(t.storage + L.storage_size_bytes));
  MLFX_ASSIGN(int8_t device_type, mem.read_value<int8_t>(t.storage + L.storage_device));
  MLFX_ASSIGN(int8_t device_index, mem.read_value<int8_t>(t.storage + L.storage_device + 1));
  t.device_type = device_type;
  t.device_index = device_index;
  return t;
}

}  // namespace mlfx::frontends::torch
