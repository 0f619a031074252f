// torch.save's zipfile format for a state_dict (torch >= 1.6 writes it; 1.13 and 2.x load it),
// without libtorch or Python:
//
//   archive/data.pkl    pickle protocol 2 of an OrderedDict key -> _rebuild_tensor_v2(
//                       storage, storage_offset, size, stride, requires_grad, OrderedDict()),
//                       storages as persistent ids ('storage', torch.<X>Storage, '<n>', device,
//                       numel), each pickled once and memoised, so shared storages stay shared
//   archive/byteorder   "little"
//   archive/data/<n>    storage n's bytes, stored, payload 64-byte aligned (mmap loading)
//   archive/version     "3\n"
//
// The _metadata attribute of a live state_dict (per-module versions for load_state_dict) is
// not written: the evidence does not tell us the versions and we do not invent them, so
// load_state_dict treats every module as the oldest version (harmless for current modules).
#pragma once

#include <span>
#include <string>

#include "exporters/tensor_record.h"

namespace mlfx::exporters {

// Top folder of every entry (any name loads; torch names it after the file).
inline constexpr std::string_view kTorchArchiveName = "archive";

// The data.pkl pickle for `tensors`, and the storages in the order their keys "0", "1", ...
// were assigned (first use). Validates everything write_torch_state_dict checks.
struct TorchPickle {
  std::string pickle;
  std::vector<SourceBytes> storages;  // bytes written for storage key i (whole elements only)
};
Result<TorchPickle> torch_state_dict_pickle(std::span<const TensorRecord> tensors);

// Writes `tensors` (state_dict order) as a new file `path` that torch.load() turns into an
// OrderedDict with the same keys, order, dtypes, shapes, strides, offsets, sharing and bytes.
// Storages are streamed from their spans. Fails (kUnsupported) for dtypes torch has no typed
// storage for, quantized dtypes (their scale/zero point are not in a TensorRecord) and one
// storage viewed as two dtypes; on failure nothing is left at `path`.
Status write_torch_state_dict(const std::string& path, std::span<const TensorRecord> tensors);

}  // namespace mlfx::exporters
