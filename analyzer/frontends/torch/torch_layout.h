// PyTorch C++ object layouts as data (c10/core/TensorImpl.h, StorageImpl.h and
// torch/csrc/autograd/python_variable.h of each release), one table per layout generation,
// chosen by self-calibration on the first tensor.
#pragma once

#include <cstdint>

namespace mlfx::frontends::torch {

struct TorchLayout {
  const char* name;  // "torch <=2.2 (1.13 verified)"
  // THPVariable: the TensorImpl* (1.13-2.9: c10::MaybeOwned<at::Tensor> cdata = {bool
  // isBorrowed @16, TensorImpl* @24}; 2.10+: at::Tensor cdata @16)
  uint32_t thp_impl;
  // c10::TensorImpl
  uint32_t impl_storage, impl_pyobj, impl_sizes_and_strides;  // sizes_and_strides = pyobj + 8
  uint32_t impl_storage_offset, impl_numel, impl_dtype;
  // c10::StorageImpl
  uint32_t storage_data, storage_device, storage_size_bytes;
};

// SizesAndStrides: size_t ndim, then int64 inline[10] (sizes 0..4, strides 5..9) or, past 5
// dims, a pointer to sizes[ndim] followed by strides[ndim].
inline constexpr uint32_t kInlineDims = 5;

// intrusive_ptr_target with two size_t counts (<= 2.2); the members after the PyObject slot
// keep their distances from it in every release: sizes_and_strides +8, storage_offset +96,
// numel +104, dtype +112.
inline constexpr TorchLayout kTorchUpTo22 = {
    .name = "torch <= 2.2 (verified on 1.13.1)",
    .thp_impl = 24,
    .impl_storage = 24,
    .impl_pyobj = 64,
    .impl_sizes_and_strides = 72,
    .impl_storage_offset = 160,
    .impl_numel = 168,
    .impl_dtype = 176,
    .storage_data = 24,
    .storage_device = 48,
    .storage_size_bytes = 56,
};
// 2.3-2.9: 32-bit refcounts (members from 16), PyObjectSlot {interpreter, PyObject*} @48.
inline constexpr TorchLayout kTorch23To29 = {
    .name = "torch 2.3-2.9 (verified on 2.6.0)",
    .thp_impl = 24,
    .impl_storage = 16,
    .impl_pyobj = 56,
    .impl_sizes_and_strides = 64,
    .impl_storage_offset = 152,
    .impl_numel = 160,
    .impl_dtype = 168,
    .storage_data = 16,
    .storage_device = 40,
    .storage_size_bytes = 48,
};
// 2.10+: THPVariable holds at::Tensor; one combined refcount; PyObjectSlot is the PyObject* alone.
inline constexpr TorchLayout kTorch210 = {
    .name = "torch >= 2.10 (verified on 2.14.1)",
    .thp_impl = 16,
    .impl_storage = 16,
    .impl_pyobj = 48,
    .impl_sizes_and_strides = 56,
    .impl_storage_offset = 144,
    .impl_numel = 152,
    .impl_dtype = 160,
    .storage_data = 16,
    .storage_device = 40,
    .storage_size_bytes = 48,
};

inline constexpr const TorchLayout* kTorchLayouts[] = {&kTorchUpTo22, &kTorch23To29, &kTorch210};

}  // namespace mlfx::frontends::torch
