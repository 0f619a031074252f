// PyTorch C++ object layouts as data (c10/core/TensorImpl.h, StorageImpl.h and
// torch/csrc/autograd/python_variable.h of each release), one table per layout generation,
// chosen by self-calibration on the first tensor.
#pragma once

#include <cstdint>

namespace mlfx::frontends::torch {

struct TorchLayout {
  const char* name;  // "torch <=2.2 (1.13 verified)"
  // THPVariable: c10::MaybeOwned<at::Tensor> cdata = {bool isBorrowed @16, TensorImpl* @24}
  uint32_t thp_impl;
  // c10::TensorImpl
  uint32_t impl_storage, impl_pyobj, impl_sizes_and_strides;  // sizes_and_strides = pyobj + 8
  uint32_t impl_storage_offset, impl_numel, impl_dtype, impl_device_opt;
  bool device_opt_engaged_first;  // c10::optional (<=2.1) stores the flag before the payload
  // c10::StorageImpl
  uint32_t storage_data, storage_device, storage_size_bytes;
};

// SizesAndStrides: size_t ndim, then int64 inline[10] (sizes 0..4, strides 5..9) or, past 5
// dims, a pointer to sizes[ndim] followed by strides[ndim].
inline constexpr uint32_t kInlineDims = 5;

inline constexpr TorchLayout kTorchUpTo22 = {
    .name = "torch <= 2.2 (verified on 1.13.1)",
    .thp_impl = 24,
    .impl_storage = 24,
    .impl_pyobj = 64,
    .impl_sizes_and_strides = 72,
    .impl_storage_offset = 160,
    .impl_numel = 168,
    .impl_dtype = 176,
    .impl_device_opt = 178,
    .device_opt_engaged_first = true,
    .storage_data = 24,
    .storage_device = 48,
    .storage_size_bytes = 56,
};

inline constexpr const TorchLayout* kTorchLayouts[] = {&kTorchUpTo22};

}  // namespace mlfx::frontends::torch
