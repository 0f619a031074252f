#include "frontends/torch/tensor_reader.h"

#include <cstdio>

namespace mlfx::frontends::torch {

namespace {

constexpr uint64_t kMaxDims = 64;

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

Result<uint64_t> TensorReader::impl_of(uint64_t obj) const {
  MLFX_ASSIGN(uint64_t impl, objects_.memory().read_u64(obj + layout_->thp_impl));
  if (!impl) return fail(Errc::kBadFormat, "tensor at " + hex_address(obj) + " has no TensorImpl");
  return impl;
}

// Picks the first table whose back-pointer (TensorImpl's PyObject slot, tag bit 0 masked)
// leads back to the Python object, as §3.7 prescribes; a table that does not fit is never used.
Status TensorReader::calibrate(uint64_t obj) {
  const auto& mem = objects_.memory();
  for (const TorchLayout* l : kTorchLayouts) {
    auto impl = mem.read_u64(obj + l->thp_impl);
    if (!impl || !*impl) continue;
    auto back = mem.read_u64(*impl + l->impl_pyobj);
    if (back && (*back & ~uint64_t(1)) == obj) {
      layout_ = l;
      return {};
    }
  }
  return fail(Errc::kUnsupported, "no torch layout table fits the tensor at " + hex_address(obj) +
                                      " (its TensorImpl does not point back to it): this torch "
                                      "version is not supported yet");
}

Result<TensorInfo> TensorReader::read(uint64_t obj) {
  if (!layout_) MLFX_TRY(calibrate(obj));
  const TorchLayout& L = *layout_;
  const auto& mem = objects_.memory();
  TensorInfo t;
  t.object = obj;
  MLFX_ASSIGN(const cpython::TypeInfo* type, objects_.type_info_of(obj));
  t.python_class = type->full_name();  // a view of the reader's type cache
  MLFX_ASSIGN(t.impl, impl_of(obj));
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
