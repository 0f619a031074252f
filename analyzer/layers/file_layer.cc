#include "layers/file_layer.h"

#include <sys/mman.h>

#include <memory>

#include "mlfx/base/file.h"

namespace mlfx::layers {

Result<std::unique_ptr<FileLayer>> FileLayer::open(const std::string& path) {
  MLFX_ASSIGN(File f, File::open_read(path));
  MLFX_ASSIGN(uint64_t size, f.size());
  std::unique_ptr<FileLayer> layer(new FileLayer);
  layer->name_ = path;
  layer->size_ = size;
  if (size > 0) {
    void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, f.fd(), 0);
    if (p == MAP_FAILED) return fail(Errc::kIo, "cannot map " + path + ": " + errno_text(errno));
    layer->data_ = static_cast<const uint8_t*>(p);
  }
  layer->file_ = std::move(f);
  return layer;
}

FileLayer::~FileLayer() {
  if (data_) munmap(const_cast<uint8_t*>(data_), size_);
}

const uint8_t* FileLayer::view(uint64_t addr, uint64_t len) const {
  if (addr > size_ || len > size_ - addr) return nullptr;
  return data_ + addr;
}

std::optional<FilePlace> FileLayer::file_place(uint64_t addr, uint64_t len) const {
  if (addr > size_ || len > size_ - addr) return std::nullopt;
  return FilePlace{file_.fd(), addr};
}

uint64_t FileLayer::mapped_run(uint64_t addr, uint64_t max) const {
  if (addr >= size_) return 0;
  return std::min(max, size_ - addr);
}

}  // namespace mlfx::layers
