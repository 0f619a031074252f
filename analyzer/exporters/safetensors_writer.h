// The safetensors format (huggingface/safetensors): u64 LE header length N, N bytes of JSON
// header padded with spaces to a multiple of 8, then every tensor's bytes, contiguous,
// row-major and little-endian, back to back in header order. No sharing, no strides: each
// tensor gets its own copy, so tied weights appear twice.
#pragma once

#include <map>
#include <span>
#include <string>

#include "exporters/tensor_record.h"

namespace mlfx::exporters {

using SafetensorsMetadata = std::map<std::string, std::string>;

// Readers refuse headers beyond this (safetensors' MAX_HEADER_SIZE).
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// The header text (without the length prefix): {"__metadata__":{...},"<key>":{"dtype":..,
// "shape":[..],"data_offsets":[begin,end]},...} with keys in the order given, padded with
// spaces so its length is a multiple of 8. "__metadata__" is left out when `metadata` is empty.
// Fails (kUnsupported) for a dtype safetensors cannot name, and on duplicate or reserved keys.
Result<std::string> safetensors_header(std::span<const TensorRecord> tensors,
                                       const SafetensorsMetadata& metadata);

// Writes a new file at `path` (never replacing one); on failure nothing is left there.
Status write_safetensors(const std::string& path, std::span<const TensorRecord> tensors,
                         const SafetensorsMetadata& metadata);

}  // namespace mlfx::exporters
