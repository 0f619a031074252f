#include "exporters/safetensors_writer.h"

#include <set>
#include <string_view>

#include "exporters/output_file.h"

namespace mlfx::exporters {
namespace {

// A JSON string literal; the input must already be valid UTF-8, which passes through as is.
void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += ch;
    }
  }
  out += '"';
}

Status check_text(std::string_view s, const char* what) {
  if (!is_valid_utf8(s))
    return fail(Errc::kInvalidArgument, std::string(what) + " is not valid UTF-8");
  return {};
}

}  // namespace

Result<std::string> safetensors_header(std::span<const TensorRecord> tensors,
                                       const SafetensorsMetadata& metadata) {
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      MLFX_TRY(check_text(k, "safetensors metadata key"));
      MLFX_TRY(check_text(v, "safetensors metadata value"));
      if (!first) h += ',';
      first = false;
      append_json_string(h, k);
      h += ':';
      append_json_string(h, v);
    }
    h += "}";
  }
  std::set<std::string_view> seen;
  uint64_t offset = 0;
  for (const TensorRecord& t : tensors) {
    MLFX_TRY(validate(t));
    const DtypeInfo* dt = find_dtype(t.scalar_type);
    if (dt->safetensors_name.empty())
      return fail(Errc::kUnsupported, "tensor '" + t.key + "': dtype " +
                                          std::string(dt->c10_name) +
                                          " has no safetensors equivalent");
    if (t.key == "__metadata__")
      return fail(Errc::kInvalidArgument, "tensor key '__metadata__' is reserved by safetensors");
    if (!seen.insert(t.key).second)
      return fail(Errc::kInvalidArgument, "duplicate tensor key '" + t.key + "'");
    MLFX_ASSIGN(uint64_t size, contiguous_size(t));
    uint64_t end;
    if (__builtin_add_overflow(offset, size, &end))
      return fail(Errc::kInvalidArgument, "safetensors data would exceed 2^64 bytes");

    if (h.size() > 1) h += ',';
    append_json_string(h, t.key);
    h += ":{\"dtype\":\"";
    h += dt->safetensors_name;
    h += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(t.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
  }
  h += '}';
  // The data then starts 8-byte aligned (8-byte length prefix + padded header).
  h.append((8 - h.size() % 8) % 8, ' ');
  if (h.size() > kMaxSafetensorsHeader)
    return fail(Errc::kUnsupported, "safetensors header would be " + std::to_string(h.size()) +
                                        " bytes, more than readers accept (" +
                                        std::to_string(kMaxSafetensorsHeader) + ")");
  return h;
}

namespace {

Status write_st(const std::string& path, std::span<const TensorRecord> tensors,
                const SafetensorsMetadata& metadata) {
  MLFX_ASSIGN(std::string header, safetensors_header(tensors, metadata));
  MLFX_ASSIGN(OutputFile out, OutputFile::create(path));
  uint8_t prefix[8];
  store_le<uint64_t>(prefix, header.size());
  MLFX_TRY(out.write(ByteView(prefix, 8)));
  MLFX_TRY(out.write(as_bytes(header)));
  const uint64_t data_start = out.offset();
  uint64_t expected = 0;
  for (const TensorRecord& t : tensors) {
    MLFX_ASSIGN(uint64_t size, contiguous_size(t));
    expected += size;
    MLFX_TRY(for_each_contiguous_piece(t, [&out](ByteView piece) { return out.write(piece); }));
    if (out.offset() - data_start != expected)  // the header promised these offsets
      return fail(Errc::kInvalidArgument, "tensor '" + t.key + "': wrote a different size than " +
                                              "its header entry");
  }
  MLFX_TRY(out.commit());
  return {};
}

}  // namespace

Status write_safetensors(const std::string& path, std::span<const TensorRecord> tensors,
                         const SafetensorsMetadata& metadata) {
  if (auto st = write_st(path, tensors, metadata); !st)
    return fail(std::move(st).error().context("writing safetensors " + path));
  return {};
}

}  // namespace mlfx::exporters
