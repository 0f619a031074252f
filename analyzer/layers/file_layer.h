// The leaf layer: a file mapped read-only into memory. Address = file offset.
#pragma once

#include <memory>

#include "layers/layer.h"

namespace mlfx::layers {

class FileLayer : public Layer {
 public:
  static Result<std::unique_ptr<FileLayer>> open(const std::string& path);
  ~FileLayer() override;

  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override;
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override;
  std::optional<FilePlace> file_place(uint64_t addr, uint64_t len) const override;
  uint64_t size() const { return size_; }

 private:
  FileLayer() = default;
  std::string name_;
  File file_;  // kept open for file_place()
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace mlfx::layers
