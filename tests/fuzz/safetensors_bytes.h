// Whole safetensors files in memory, for the seeds and the rewrite check of safetensors_fuzz.cc:
// contiguous tensors, each its own storage, laid out as write_safetensors lays them out.
#pragma once

#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "exporters/safetensors_writer.h"
#include "exporters/tensor_record.h"
#include "mlfx/base/bytes.h"

namespace mlfx::fuzz {

// A contiguous (row-major) tensor over `data`; nullopt when its strides overflow int64 (only an
// empty tensor's other sizes can be that large).
inline std::optional<exporters::TensorRecord> contiguous_tensor(std::string key, int scalar_type,
                                                                std::vector<int64_t> shape, ByteView data,
                                                                uint64_t storage_id) {
  exporters::TensorRecord t;
  t.key = std::move(key);
  t.scalar_type = scalar_type;
  t.shape = std::move(shape);
  t.strides.resize(t.shape.size());
  int64_t stride = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    t.strides[i] = stride;
    if (__builtin_mul_overflow(stride, std::max<int64_t>(t.shape[i], 1), &stride)) return std::nullopt;
  }
  t.storage.id = storage_id;
  t.storage.data = data;
  t.storage.size_bytes = data.size();
  return t;
}

// The file: u64 LE header length, the header, then each tensor's storage bytes in order.
inline Result<std::vector<uint8_t>> safetensors_bytes(std::span<const exporters::TensorRecord> tensors,
                                                      const exporters::SafetensorsMetadata& metadata) {
  MLFX_ASSIGN(std::string header, exporters::safetensors_header(tensors, metadata));
  std::vector<uint8_t> file(8);
  store_le<uint64_t>(file.data(), header.size());
  file.insert(file.end(), header.begin(), header.end());
  for (const auto& t : tensors) file.insert(file.end(), t.storage.data.begin(), t.storage.data.end());
  return file;
}

}  // namespace mlfx::fuzz
