#include "exporters/tensor_record.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

namespace mlfx::exporters {
namespace {

// c10/core/ScalarType.h, in number order (§3.6). Safetensors names from the format's dtype
// list; storage classes from torch/storage.py _dtype_to_storage_type_map(). Types added in
// 2.x have no typed storage (torch saves them through _rebuild_tensor_v3 instead).
constexpr std::array<DtypeInfo, 47> kDtypes = {{
    {0, "Byte", "uint8", 1, "U8", "ByteStorage", false},
    {1, "Char", "int8", 1, "I8", "CharStorage", false},
    {2, "Short", "int16", 2, "I16", "ShortStorage", false},
    {3, "Int", "int32", 4, "I32", "IntStorage", false},
    {4, "Long", "int64", 8, "I64", "LongStorage", false},
    {5, "Half", "float16", 2, "F16", "HalfStorage", false},
    {6, "Float", "float32", 4, "F32", "FloatStorage", false},
    {7, "Double", "float64", 8, "F64", "DoubleStorage", false},
    {8, "ComplexHalf", "complex32", 4, "", "", false},
    {9, "ComplexFloat", "complex64", 8, "C64", "ComplexFloatStorage", false},
    {10, "ComplexDouble", "complex128", 16, "", "ComplexDoubleStorage", false},
    {11, "Bool", "bool", 1, "BOOL", "BoolStorage", false},
    {12, "QInt8", "qint8", 1, "", "QInt8Storage", true},
    {13, "QUInt8", "quint8", 1, "", "QUInt8Storage", true},
    {14, "QInt32", "qint32", 4, "", "QInt32Storage", true},
    {15, "BFloat16", "bfloat16", 2, "BF16", "BFloat16Storage", false},
    {16, "QUInt4x2", "quint4x2", 1, "", "QUInt4x2Storage", true},
    {17, "QUInt2x4", "quint2x4", 1, "", "QUInt2x4Storage", true},
    {18, "Bits1x8", "bits1x8", 1, "", "", false},
    {19, "Bits2x4", "bits2x4", 1, "", "", false},
    {20, "Bits4x2", "bits4x2", 1, "", "", false},
    {21, "Bits8", "bits8", 1, "", "", false},
    {22, "Bits16", "bits16", 2, "", "", false},
    {23, "Float8_e5m2", "float8_e5m2", 1, "F8_E5M2", "", false},
    {24, "Float8_e4m3fn", "float8_e4m3fn", 1, "F8_E4M3", "", false},
    {25, "Float8_e5m2fnuz", "float8_e5m2fnuz", 1, "", "", false},
    {26, "Float8_e4m3fnuz", "float8_e4m3fnuz", 1, "", "", false},
    {27, "UInt16", "uint16", 2, "U16", "", false},
    {28, "UInt32", "uint32", 4, "U32", "", false},
    {29, "UInt64", "uint64", 8, "U64", "", false},
    // Sub-byte placeholder types: one byte per element in memory.
    {30, "UInt1", "uint1", 1, "", "", false},
    {31, "UInt2", "uint2", 1, "", "", false},
    {32, "UInt3", "uint3", 1, "", "", false},
    {33, "UInt4", "uint4", 1, "", "", false},
    {34, "UInt5", "uint5", 1, "", "", false},
    {35, "UInt6", "uint6", 1, "", "", false},
    {36, "UInt7", "uint7", 1, "", "", false},
    {37, "Int1", "int1", 1, "", "", false},
    {38, "Int2", "int2", 1, "", "", false},
    {39, "Int3", "int3", 1, "", "", false},
    {40, "Int4", "int4", 1, "", "", false},
    {41, "Int5", "int5", 1, "", "", false},
    {42, "Int6", "int6", 1, "", "", false},
    {43, "Int7", "int7", 1, "", "", false},
    {44, "Float8_e8m0fnu", "float8_e8m0fnu", 1, "F8_E8M0", "", false},
    // Two 4-bit values per element: safetensors' "F4" counts single values, so no mapping.
    {45, "Float4_e2m1fn_x2", "float4_e2m1fn_x2", 1, "", "", false},
    // Seen in the 2.14 headers only; no torch.<name> for it that we could confirm.
    {46, "BComplex32", "", 4, "", "", false},
}};

// Pieces at least this large are handed to the sink as spans of the storage itself.
constexpr size_t kDirectPiece = 256 * 1024;
constexpr size_t kBounceSize = 1 << 20;
constexpr size_t kFilePiece = 1 << 20;  // pread pieces: still in the cache when written

std::string where(const TensorRecord& t) { return "tensor '" + t.key + "'"; }

}  // namespace

std::span<const DtypeInfo> dtype_table() { return kDtypes; }

const DtypeInfo* find_dtype(int scalar_type) {
  if (scalar_type < 0 || static_cast<size_t>(scalar_type) >= kDtypes.size()) return nullptr;
  return &kDtypes[static_cast<size_t>(scalar_type)];
}

Result<uint64_t> numel(const TensorRecord& t) {
  uint64_t n = 1;
  for (int64_t s : t.shape) {
    if (s < 0) return fail(Errc::kBadFormat, where(t) + ": negative size " + std::to_string(s));
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(s), &n) || n > uint64_t(INT64_MAX))
      return fail(Errc::kBadFormat, where(t) + ": element count overflows 64 bits");
  }
  return n;
}

Status validate(const TensorRecord& t) {
  const DtypeInfo* dt = find_dtype(t.scalar_type);
  if (!dt)
    return fail(Errc::kUnsupported,
                where(t) + ": unknown c10::ScalarType " + std::to_string(t.scalar_type));
  if (!is_valid_utf8(t.key)) return fail(Errc::kBadFormat, where(t) + ": key is not valid UTF-8");
  if (t.shape.size() != t.strides.size())
    return fail(Errc::kBadFormat, where(t) + ": " + std::to_string(t.shape.size()) + " sizes but " +
                                      std::to_string(t.strides.size()) + " strides");
  if (t.shape.size() > kMaxRank)
    return fail(Errc::kBadFormat, where(t) + ": rank " + std::to_string(t.shape.size()) +
                                      " exceeds " + std::to_string(kMaxRank));
  for (int64_t s : t.strides)
    if (s < 0) return fail(Errc::kBadFormat, where(t) + ": negative stride " + std::to_string(s));
  if (t.storage_offset < 0)
    return fail(Errc::kBadFormat,
                where(t) + ": negative storage offset " + std::to_string(t.storage_offset));
  if (t.storage.data.size() != t.storage.size_bytes)
    return fail(Errc::kInvalidArgument,
                where(t) + ": storage declares " + std::to_string(t.storage.size_bytes) +
                    " bytes but " + std::to_string(t.storage.data.size()) + " are available");
  MLFX_ASSIGN(uint64_t n, numel(t));
  uint64_t total;
  if (__builtin_mul_overflow(n, uint64_t(dt->item_size), &total))
    return fail(Errc::kBadFormat, where(t) + ": byte size overflows 64 bits");
  // Like torch, an empty tensor may point anywhere: it addresses no element.
  if (n == 0) return {};
  // Highest element index addressed, then its end in bytes; all of it must fit the storage.
  unsigned __int128 last = static_cast<uint64_t>(t.storage_offset);
  for (size_t i = 0; i < t.shape.size(); ++i) {
    // Each term is below 2^126 and `last` stays below 2^64, so this cannot wrap.
    last += static_cast<unsigned __int128>(t.shape[i] - 1) * static_cast<uint64_t>(t.strides[i]);
    if (last > UINT64_MAX)
      return fail(Errc::kBadFormat, where(t) + ": strides address beyond 2^64 elements");
  }
  const unsigned __int128 end = (last + 1) * dt->item_size;
  if (end > t.storage.size_bytes)
    return fail(Errc::kBadFormat, where(t) + ": addresses bytes past the end of its storage (" +
                                      std::to_string(t.storage.size_bytes) + " bytes)");
  return {};
}

Result<uint64_t> contiguous_size(const TensorRecord& t) {
  const DtypeInfo* dt = find_dtype(t.scalar_type);
  if (!dt)
    return fail(Errc::kUnsupported,
                where(t) + ": unknown c10::ScalarType " + std::to_string(t.scalar_type));
  MLFX_ASSIGN(uint64_t n, numel(t));
  uint64_t total;
  if (__builtin_mul_overflow(n, uint64_t(dt->item_size), &total))
    return fail(Errc::kBadFormat, where(t) + ": byte size overflows 64 bits");
  return total;
}

Status stream_bytes(const SourceBytes& src, const std::function<Status(ByteView)>& sink) {
  if (src.place.fd < 0 || src.bytes.empty()) return sink(src.bytes);
  // One buffer per thread for its life: a fresh one per tensor cost 256 page faults each.
  thread_local std::unique_ptr<uint8_t[]> buffer(new uint8_t[kFilePiece]);
  for (uint64_t done = 0; done < src.bytes.size();) {
    const size_t want = std::min<uint64_t>(kFilePiece, src.bytes.size() - done);
    const uint64_t offset = src.place.offset + done;
    ssize_t n = ::pread(src.place.fd, buffer.get(), want, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(Errc::kIo, "cannot read the evidence at file offset " + hex_address(offset) + ": " + errno_text(errno));
    if (n == 0) return fail(Errc::kIo, "the evidence ends early, at file offset " + hex_address(offset) + " (truncated while read?)");
    MLFX_TRY(sink(ByteView(buffer.get(), static_cast<size_t>(n))));
    done += static_cast<uint64_t>(n);
  }
  return {};
}

Status for_each_contiguous_piece(const TensorRecord& t,
                                 const std::function<Status(ByteView)>& sink) {
  MLFX_TRY(validate(t));
  MLFX_ASSIGN(uint64_t n, numel(t));
  if (n == 0) return {};
  const uint64_t item = find_dtype(t.scalar_type)->item_size;
  const uint8_t* base = t.storage.data.data();

  // Drop size-1 dimensions and merge neighbours that are laid out as one, so a contiguous
  // tensor becomes a single run whatever its rank.
  struct Dim {
    uint64_t size, stride;
  };
  std::vector<Dim> dims;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (t.shape[i] == 1) continue;
    Dim d{static_cast<uint64_t>(t.shape[i]), static_cast<uint64_t>(t.strides[i])};
    if (!dims.empty() && dims.back().stride == d.size * d.stride) {
      dims.back() = {dims.back().size * d.size, d.stride};
    } else {
      dims.push_back(d);
    }
  }
  // The innermost run: a block of consecutive elements when its stride is 1, else one element.
  uint64_t run_elems = 1;
  if (!dims.empty() && dims.back().stride == 1) {
    run_elems = dims.back().size;
    dims.pop_back();
  }
  const uint64_t run_bytes = run_elems * item;  // bounded by the storage size (validated)

  Bytes bounce;
  auto flush = [&]() -> Status {
    if (bounce.empty()) return {};
    MLFX_TRY(sink(ByteView(bounce.data(), bounce.size())));
    bounce.clear();
    return {};
  };
  auto emit = [&](uint64_t elem_index) -> Status {
    ByteView run(base + elem_index * item, run_bytes);
    if (run_bytes >= kDirectPiece) {
      MLFX_TRY(flush());
      return stream_bytes(SourceBytes(t.storage.data, t.storage.place).subspan(elem_index * item, run_bytes), sink);
    }
    if (bounce.capacity() == 0) bounce.reserve(kBounceSize);
    if (bounce.size() + run.size() > kBounceSize) MLFX_TRY(flush());
    bounce.insert(bounce.end(), run.begin(), run.end());
    return {};
  };

  // Odometer over the outer dimensions, tracking the element index incrementally.
  std::vector<uint64_t> idx(dims.size(), 0);
  uint64_t pos = static_cast<uint64_t>(t.storage_offset);
  for (;;) {
    MLFX_TRY(emit(pos));
    size_t d = dims.size();
    while (d > 0) {
      --d;
      if (++idx[d] < dims[d].size) {
        pos += dims[d].stride;
        break;
      }
      pos -= (dims[d].size - 1) * dims[d].stride;
      idx[d] = 0;
      if (d == 0) return flush();
    }
    if (dims.empty()) return flush();
  }
}

Result<Bytes> contiguous_bytes(const TensorRecord& t, uint64_t max_bytes) {
  MLFX_TRY(validate(t));
  MLFX_ASSIGN(uint64_t size, contiguous_size(t));
  if (size > max_bytes)
    return fail(Errc::kInvalidArgument, where(t) + ": contiguous copy would take " +
                                            std::to_string(size) + " bytes, more than the " +
                                            std::to_string(max_bytes) + " allowed");
  Bytes out;
  out.reserve(size);
  MLFX_TRY(for_each_contiguous_piece(t, [&out](ByteView piece) -> Status {
    out.insert(out.end(), piece.begin(), piece.end());
    return {};
  }));
  return out;
}

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    uint8_t c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    size_t len;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (static_cast<size_t>(end - p) < len) return false;
    for (size_t i = 1; i < len; ++i) {
      if ((p[i] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    p += len;
  }
  return true;
}

}  // namespace mlfx::exporters
