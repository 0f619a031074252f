// Reads the safetensors format that safetensors_writer.h writes (and huggingface's tools):
// every header field is checked against the file before any tensor byte is handed out, so a
// hostile file gets an error naming what is wrong, never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "exporters/tensor_record.h"
#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx::exporters {

struct SafetensorsTensor {
  std::string name;
  const DtypeInfo* dtype = nullptr;  // never null once read
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;       // byte range in the data section
};

class SafetensorsFile {
 public:
  // Parses `bytes` (the whole file); `what` names it in messages.
  static Result<SafetensorsFile> parse(std::vector<uint8_t> bytes, const std::string& what);
  // Reads and parses a file, refusing files larger than max_bytes.
  static Result<SafetensorsFile> read(const std::string& path, uint64_t max_bytes = uint64_t{1} << 40);

  // Tensors in data order (which is the writer's order for our files).
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensor* find(const std::string& name) const;
  // The tensor's bytes: contiguous, row-major, little-endian.
  ByteView data(const SafetensorsTensor& t) const;
  uint64_t data_bytes() const { return bytes_.size() - data_start_; }

 private:
  std::vector<uint8_t> bytes_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mlfx::exporters
