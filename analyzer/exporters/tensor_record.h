// One recovered tensor, described independently of where it was found (process memory, a
// LiME image, a GPU core), and the dtype table every exporter shares.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mlfx/base/bytes.h"
#include "mlfx/base/file.h"
#include "mlfx/base/result.h"

namespace mlfx::exporters {

// One c10::ScalarType (c10/core/ScalarType.h) and its names in the formats
// we write. An empty name means the format has no way to express the type.
struct DtypeInfo {
  int scalar_type;                    // c10::ScalarType number
  std::string_view c10_name;          // "Float", "BFloat16", "QInt8"
  std::string_view torch_name;        // torch.<name>: "float32", "bfloat16", "qint8"
  uint32_t item_size;                 // bytes per element
  std::string_view safetensors_name;  // "F32", "BF16"; empty: not in the safetensors format
  std::string_view storage_class;     // torch.<X>Storage; empty: torch has no typed storage
  bool quantized;                     // needs quantizer parameters to rebuild in torch
};

// Known ScalarType numbers used by name in code.
enum ScalarType : int {
  kByte = 0, kChar = 1, kShort = 2, kInt = 3, kLong = 4, kHalf = 5, kFloat = 6, kDouble = 7,
  kComplexHalf = 8, kComplexFloat = 9, kComplexDouble = 10, kBool = 11, kQInt8 = 12,
  kQUInt8 = 13, kQInt32 = 14, kBFloat16 = 15,
};

// The whole table, ordered by ScalarType number.
std::span<const DtypeInfo> dtype_table();
// The row for a ScalarType number; nullptr when the number is not a known type.
const DtypeInfo* find_dtype(int scalar_type);

// Largest rank accepted; torch refuses more than 64 dimensions too.
inline constexpr size_t kMaxRank = 64;

// A storage (c10::StorageImpl) as recovered. Tensors whose `id` is equal share it: tied
// weights, views. Every tensor naming an id must describe the same bytes and device.
struct StorageRef {
  uint64_t id = 0;          // identity, e.g. the StorageImpl address in the evidence
  ByteView data;            // the storage's whole bytes; the caller keeps them alive
  uint64_t size_bytes = 0;  // the storage's declared size; must equal data.size()
  std::string device = "cpu";
  FilePlace place;          // where `data` also lies in an open file, if known
};

// Bytes to export: in memory and, when place.fd >= 0, also at `place` in an open file.
struct SourceBytes {
  ByteView bytes;
  FilePlace place;
  SourceBytes(ByteView b = {}, FilePlace p = {}) : bytes(b), place(p) {}  // NOLINT: a view converts
  // [at, at+n) of these bytes, which must lie inside.
  SourceBytes subspan(uint64_t at, uint64_t n) const {
    return {bytes.subspan(at, n), place.fd < 0 ? place : FilePlace{place.fd, place.offset + at}};
  }
};

// Streams `src` to `sink`: read from its file in pieces of at most 1 MiB when it has one (the
// mapping behind `bytes` is never touched), else handed over as one view.
Status stream_bytes(const SourceBytes& src, const std::function<Status(ByteView)>& sink);

struct TensorRecord {
  std::string key;               // state_dict key, e.g. "encoder.layers.0.weight"
  int scalar_type = kFloat;      // c10::ScalarType number
  std::vector<int64_t> shape;    // sizes; empty for a 0-d tensor
  std::vector<int64_t> strides;  // in elements, one per dimension
  int64_t storage_offset = 0;    // in elements
  bool requires_grad = false;
  StorageRef storage;
};

// Element count (product of the shape), refusing negative sizes and overflow.
Result<uint64_t> numel(const TensorRecord& t);

// Checks that the metadata is self-consistent and every element the tensor addresses lies
// inside its storage, with overflow-safe arithmetic: hostile metadata gets an error naming
// the key, never an out-of-bounds read later.
Status validate(const TensorRecord& t);

// Bytes of the tensor's logical contents laid out contiguous and row-major.
Result<uint64_t> contiguous_size(const TensorRecord& t);

// Streams the tensor's logical contents, contiguous and row-major, to `sink` in pieces:
// spans of the storage itself where the layout allows, else copies gathered into a bounce
// buffer. Validates first. Works for non-contiguous, offset and zero-stride (expanded) views.
Status for_each_contiguous_piece(const TensorRecord& t,
                                 const std::function<Status(ByteView)>& sink);

// The same, collected into one buffer; refuses results larger than max_bytes (a zero-stride
// tensor can describe far more bytes than its storage holds).
Result<Bytes> contiguous_bytes(const TensorRecord& t, uint64_t max_bytes);

// True if `s` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace mlfx::exporters
