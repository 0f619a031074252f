#include "recovery/gpu_memory.h"

#include <algorithm>
#include <fstream>

#include "layers/file_layer.h"
#include "mlfx/base/bytes.h"
#include "mlfx/base/file.h"

namespace mlfx::recovery {

namespace {

constexpr int kCpu = 0, kCuda = 1;               // c10::DeviceType
constexpr uint64_t kAllocatorAlignment = 512;     // the caching allocator's kMinBlockSize
constexpr uint64_t kMaxContextBytes = 1u << 20;

// What a compressed dump may inflate to: the memory this machine has available now, less a
// quarter for the analysis itself (the inflated dump lives in memory).
uint64_t inflate_limit() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  while (meminfo >> key >> kib)
    if (key == "MemAvailable:") return kib * 1024 / 4 * 3;
  return uint64_t{8} << 30;
}

json::Json dump_description(const layers::CudaCoreLayer& dump, json::Json source) {
  const layers::CudaCoreInfo& info = dump.info();
  json::Json devices = json::Json::array();
  for (const layers::CudaDevice& d : info.devices)
    devices.push_back({{"name", d.name}, {"type", d.type}, {"sm", d.sm_type}, {"id", d.dev_id},
                       {"pci_bus_id", d.pci_bus_id}, {"pci_device_id", d.pci_dev_id}, {"sms", d.num_sms},
                       {"compute_capability", std::to_string(d.sm_major) + "." + std::to_string(d.sm_minor)}});
  json::Json meta = nullptr;
  if (info.meta)
    meta = {{"generator", info.meta->generator},
            {"driver_version", std::to_string(info.meta->driver_major) + "." + std::to_string(info.meta->driver_minor)},
            {"cuda_version", std::to_string(info.meta->cuda_major) + "." + std::to_string(info.meta->cuda_minor)},
            {"generation_flags", info.meta->flags}, {"timestamp", info.meta->timestamp}};
  source["abi_version"] = info.abi_version;
  source["gzip"] = info.gzip;
  source["extended_numbering"] = info.extended_numbering;
  source["sections"] = info.sections;
  source["device_row_bytes"] = info.device_row_size;
  source["devices"] = devices;
  source["contexts"] = info.contexts.size();
  source["metadata"] = meta;
  source["global_memory"] = {{"sections", info.global_sections}, {"bytes", info.global_bytes}};
  source["managed_memory"] = {{"sections", info.managed_sections}, {"bytes", info.managed_bytes}};
  source["global_memory_skipped"] = info.global_memory_skipped();
  source["unreadable_bytes"] = info.unreadable_bytes;
  source["warnings"] = info.warnings;
  return source;
}

}  // namespace

std::string device_name(const frontends::torch::TensorInfo& t) {
  if (t.device_type == kCpu) return "cpu";
  const std::string index = t.device_index >= 0 ? ":" + std::to_string(t.device_index) : "";
  if (t.device_type == kCuda) return "cuda" + index;
  return "device type " + std::to_string(t.device_type) + index;
}

Result<std::optional<GpuEvidence>> open_gpu_evidence(const evidence::DecryptedStreams* bundle, const std::string& path) {
  std::unique_ptr<layers::FileLayer> file;
  GpuEvidence gpu;
  json::Json source;
  if (!path.empty()) {
    if (bundle && bundle->find("gpu-core"))
      return fail(Errc::kInvalidArgument, "--gpu-core: the bundle holds its own GPU core dump (stream gpu-core); leave --gpu-core out");
    MLFX_ASSIGN(file, layers::FileLayer::open(path));
    source = {{"source", "file"}, {"path", path}, {"bytes", file->size()}};
  } else if (bundle && bundle->find("gpu-core")) {
    MLFX_ASSIGN(file, layers::FileLayer::open(bundle->find("gpu-core")->path()));
    const bundle::StreamInfo* s = bundle->manifest.find_stream("gpu-core");
    source = {{"source", "bundle stream gpu-core"}, {"bytes", file->size()}, {"sha256", s ? s->sha256 : ""}};
    if (const File* ctx = bundle->find("gpu-context")) {
      auto text = read_small_file(ctx->path(), kMaxContextBytes);
      json::Json c = text ? json::Json::parse(*text, nullptr, false) : json::Json();
      if (c.is_object() && c.contains("pid") && c["pid"].is_number_integer()) gpu.pid = c["pid"].get<int32_t>();
      if (c.is_object()) source["capture"] = c.value("method", json::Json(nullptr));
    }
  } else {
    return std::optional<GpuEvidence>{};
  }
  if (file->size() == 0) return fail(Errc::kBadFormat, "the GPU core dump is empty (" + file->name() + ")");
  std::shared_ptr<const layers::Layer> f = std::move(file);
  auto dump = layers::CudaCoreLayer::open(f, inflate_limit());
  if (!dump) return fail(std::move(dump).error().context("opening the GPU core dump"));
  gpu.dump = std::move(*dump);
  gpu.description = dump_description(*gpu.dump, std::move(source));
  return std::optional<GpuEvidence>(std::move(gpu));
}

Result<const layers::Layer*> TensorMemory::layer_for(const frontends::torch::TensorInfo& t) {
  const std::string what = "its storage of " + std::to_string(t.storage_bytes) + " bytes at " + hex_address(t.data);
  if (t.device_type == kCpu) {
    if (t.storage_bytes && !host_.is_mapped(t.data, t.storage_bytes))
      return fail(Errc::kInvalidAddress, what + " is not all in the image");
    return &host_;
  }
  if (t.device_type != kCuda)
    return fail(Errc::kUnsupported, "tensor on " + device_name(t) + "; its memory is not in a host memory image");
  ++cuda_tensors_;
  check_storage(t);
  if (gpu_ && gpu_->dump->is_mapped(t.data, t.storage_bytes)) {
    ++from_dump_;
    return static_cast<const layers::Layer*>(gpu_->dump.get());
  }
  if (t.storage_bytes && host_.is_mapped(t.data, t.storage_bytes)) {  // managed / unified memory
    ++from_process_image_;
    return &host_;
  }
  ++missing_;
  if (!gpu_)
    return fail(Errc::kNotFound, "a " + device_name(t) + " tensor: " + what +
                                     " is GPU memory, and the evidence holds no GPU core dump (capture with "
                                     "'mlfx-agent capture --source gpu,process', or give --gpu-core FILE)");
  if (gpu_->dump->info().global_memory_skipped())
    return fail(Errc::kNotFound, "a " + device_name(t) + " tensor: the GPU core dump was made with skip_global_memory, "
                                                         "so " + what + " is not in it");
  return fail(Errc::kInvalidAddress, "a " + device_name(t) + " tensor: " + what + " is not all in the GPU core dump");
}

void TensorMemory::check_storage(const frontends::torch::TensorInfo& t) {
  if (!gpu_ || !checked_storages_.insert(t.storage).second) return;
  ++storages_;
  if (t.data % kAllocatorAlignment) ++misaligned_;
  const auto& segs = gpu_->dump->segments();
  auto it = std::upper_bound(segs.begin(), segs.end(), t.data, [](uint64_t a, const layers::Segment& s) { return a < s.start; });
  if (it == segs.begin() || t.data - std::prev(it)->start >= std::prev(it)->size) {
    ++outside_;
    return;
  }
  const layers::Segment& s = *std::prev(it);
  sections_used_.insert(s.start);
  if (t.storage_bytes <= s.size - (t.data - s.start)) ++in_one_section_;
  else ++spanning_;
}

json::Json TensorMemory::report() const {
  json::Json tensors = {{"cuda", cuda_tensors_}, {"from_gpu_dump", from_dump_},
                        {"from_process_image", from_process_image_}, {"missing", missing_}};
  if (!gpu_) return {{"dump", nullptr}, {"tensors", tensors}, {"allocator_check", nullptr}};
  uint64_t unused_sections = 0, unused_bytes = 0;
  for (const layers::Segment& s : gpu_->dump->segments())
    if (!sections_used_.count(s.start)) ++unused_sections, unused_bytes += s.size;
  json::Json check = {{"storages", storages_}, {"in_one_section", in_one_section_}, {"spanning_sections", spanning_},
                      {"outside_the_dump", outside_}, {"misaligned", misaligned_},
                      {"sections_without_a_storage", unused_sections}, {"bytes_without_a_storage", unused_bytes},
                      {"consistent", spanning_ == 0 && misaligned_ == 0}};
  return {{"dump", gpu_->description}, {"tensors", tensors}, {"allocator_check", check}};
}

}  // namespace mlfx::recovery
