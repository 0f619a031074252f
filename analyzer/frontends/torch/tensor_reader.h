// Reads torch tensors (THPVariable -> TensorImpl -> StorageImpl) out of a process image.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "frontends/cpython/python_objects.h"
#include "frontends/torch/torch_layout.h"
#include "base/diagnostics.h"

namespace mlfx::frontends::torch {

struct TensorInfo {
  uint64_t object = 0;   // the Python tensor (THPVariable)
  uint64_t impl = 0;     // c10::TensorImpl*
  uint64_t storage = 0;  // c10::StorageImpl*: tensors sharing it share memory
  uint64_t data = 0;     // the storage's first byte
  uint64_t storage_bytes = 0;
  int scalar_type = 0;
  int device_type = 0, device_index = -1;  // c10::DeviceType (0 CPU, 1 CUDA), index
  std::vector<int64_t> sizes, strides;
  int64_t storage_offset = 0, numel = 0;
  std::string_view python_class;  // torch.nn.parameter.Parameter, torch.Tensor... (type cache)
};

class TensorReader {
 public:
  explicit TensorReader(const cpython::ObjectReader& objects) : objects_(objects) {}

  // Whether `type` is a tensor type (its MRO holds torch's C tensor base).
  Result<bool> is_tensor_type(uint64_t type) const;
  // Reads one tensor; the first call picks the layout: the first table under which the tensor
  // reads back whole (its TensorImpl points back to it, numel is the product of its sizes, its
  // storage holds its extent), else one derived from those invariants.
  Result<TensorInfo> read(uint64_t obj);
  // The layout in use (after the first read), and its name: a table's, or how it was derived.
  const TorchLayout* layout() const { return calibrated_ ? &layout_ : nullptr; }
  const std::string& layout_name() const { return layout_name_; }
  // Why no layout was found, while none is: the last calibration's error ("unsupported: ...").
  const std::string& unsupported() const { return unsupported_; }

 private:
  Result<TensorInfo> read_with(const TorchLayout& L, uint64_t obj) const;
  Status calibrate(uint64_t obj);
  bool fits(uint64_t obj, bool need_data);  // sets the layout when one reads `obj` whole

  const cpython::ObjectReader& objects_;
  TorchLayout layout_{};
  std::string layout_name_, unsupported_;
  bool calibrated_ = false;
};

}  // namespace mlfx::frontends::torch
