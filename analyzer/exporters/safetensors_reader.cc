#include "exporters/safetensors_reader.h"

#include <algorithm>

#include "exporters/safetensors_writer.h"
#include "mlfx/base/file.h"
#include "mlfx/base/json.h"

namespace mlfx::exporters {

namespace {

const DtypeInfo* dtype_by_safetensors_name(const std::string& name) {
  for (const DtypeInfo& d : dtype_table())
    if (!d.safetensors_name.empty() && d.safetensors_name == name) return &d;
  return nullptr;
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& what) {
  auto bad = [&](const std::string& why) {
    return fail(Errc::kBadFormat, what + ": not a valid safetensors file: " + why);
  };
  if (bytes.size() < 8) return bad("shorter than its 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxSafetensorsHeader || header_len > bytes.size() - 8)
    return bad("header length " + std::to_string(header_len) + " exceeds the file");
  auto header = json::Json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<ptrdiff_t>(header_len),
                                  nullptr, /*allow_exceptions=*/false);
  if (!header.is_object()) return bad("the header is not a JSON object");

  SafetensorsFile f;
  f.data_start_ = 8 + header_len;
  const uint64_t data_size = bytes.size() - f.data_start_;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) return bad("__metadata__ is not an object");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string()) return bad("__metadata__." + k + " is not a string");
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    if (!info.is_object() || !info.contains("dtype") || !info["dtype"].is_string() ||
        !info.contains("shape") || !info["shape"].is_array() || !info.contains("data_offsets") ||
        !info["data_offsets"].is_array() || info["data_offsets"].size() != 2)
      return bad("tensor '" + name + "' lacks dtype, shape or data_offsets");
    SafetensorsTensor t;
    t.name = name;
    t.dtype = dtype_by_safetensors_name(info["dtype"].get<std::string>());
    if (!t.dtype) return bad("tensor '" + name + "' has unknown dtype " + info["dtype"].dump());
    uint64_t count = 1;
    if (info["shape"].size() > kMaxRank) return bad("tensor '" + name + "' has too many dimensions");
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) return bad("tensor '" + name + "' has a bad dimension " + d.dump());
      const uint64_t n = d.get<uint64_t>();
      if (n != 0 && count > data_size / n) return bad("tensor '" + name + "' is larger than the file");
      count *= n;
      t.shape.push_back(static_cast<int64_t>(n));
    }
    const auto& off = info["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      return bad("tensor '" + name + "' has bad data_offsets");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      return bad("tensor '" + name + "' data_offsets lie outside the data");
    if (count > data_size / t.dtype->item_size || t.end - t.begin != count * t.dtype->item_size)
      return bad("tensor '" + name + "' data_offsets do not match its dtype and shape");
    f.tensors_.push_back(std::move(t));
  }
  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const auto& a, const auto& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  for (size_t i = 1; i < f.tensors_.size(); ++i)
    if (f.tensors_[i].begin < f.tensors_[i - 1].end)
      return bad("tensors '" + f.tensors_[i - 1].name + "' and '" + f.tensors_[i].name + "' overlap");
  f.bytes_ = std::move(bytes);
  return f;
}

Result<SafetensorsFile> SafetensorsFile::read(const std::string& path, uint64_t max_bytes) {
  MLFX_ASSIGN(File file, File::open_read(path));
  MLFX_ASSIGN(uint64_t size, file.size());
  if (size > max_bytes)
    return fail(Errc::kBadFormat, path + ": " + std::to_string(size) + " bytes, more than the " +
                                      std::to_string(max_bytes) + " allowed");
  std::vector<uint8_t> bytes(size);
  if (size) MLFX_TRY(file.pread_exact(0, bytes.data(), size));
  return parse(std::move(bytes), path);
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

ByteView SafetensorsFile::data(const SafetensorsTensor& t) const {
  return ByteView(bytes_.data() + data_start_ + t.begin, t.end - t.begin);
}

}  // namespace mlfx::exporters
