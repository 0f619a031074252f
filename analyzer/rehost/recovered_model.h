// A model directory written by `mlfx recover`, loaded into libtorch tensors with the live
// layout: each tensor gets the strides and storage offset it had in the process, and tensors
// that shared a storage there (tied weights, views) share one here.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <map>
#include <string>
#include <vector>

#include "exporters/safetensors_reader.h"
#include "mlfx/base/json.h"
#include "mlfx/base/result.h"

namespace mlfx::rehost {

struct RecoveredModel {
  std::string dir;
  json::Json architecture;                 // architecture.json: the module tree
  std::map<std::string, at::Tensor> state;  // state_dict keys and non-persistent buffers
  std::vector<std::string> state_keys;     // state_dict() order (persistent entries only)
  bool exact_layout = false;  // false: an older recovery without strides; tensors are contiguous
};

// Reads DIR/architecture.json, DIR/state_dict.safetensors and DIR/non_persistent.safetensors.
Result<RecoveredModel> load_recovered_model(const std::string& dir);

// A safetensors tensor as a fresh contiguous libtorch tensor (a copy).
at::Tensor to_tensor(const exporters::SafetensorsFile& file, const exporters::SafetensorsTensor& t);

// Loads a TorchScript model: the file itself, or the one a `mlfx rehost` directory names.
Result<torch::jit::Module> load_torchscript(const std::string& file_or_rehost_dir);

// Tensor dtype by c10 name or torch name ("float32"); nullopt when unknown.
std::optional<at::ScalarType> scalar_type_named(const std::string& name);

// What libtorch threw, in one line: c10::Error's message without its backtrace, or the last
// "...Error: ..." line of a TorchScript interpreter traceback.
std::string torch_error(const std::exception& e);

// Bit-for-bit equality: same dtype, shape and bytes (NaNs with equal bits are equal).
bool same_bits(const at::Tensor& a, const at::Tensor& b);

}  // namespace mlfx::rehost
