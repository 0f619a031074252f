#include "recovery/recover.h"

#include <elf.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <deque>
#include <future>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>
#include <memory>

#include "evidence/bundle_check.h"
#include "exporters/output_file.h"
#include "exporters/safetensors_writer.h"
#include "exporters/torch_pt_writer.h"
#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "frontends/torch/module_walker.h"
#include "frontends/torch/tensor_reader.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "layers/lime_layer.h"
#include "kernel/captured_kernel.h"
#include "physical/physical_image.h"
#include "recovery/gpu_memory.h"
#include "layers/sysroot_layer.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
#include "mlfx/base/progress.h"
#include "mlfx/base/subprocess.h"
#include "mlfx/base/version.h"
#include "mlfx/bundle/format.h"

namespace mlfx::recovery {

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// A directory name from a class name: the last component, [A-Za-z0-9_.-] only.
std::string dir_name(size_t index, const std::string& class_name) {
  std::string leaf = class_name.substr(class_name.find_last_of('.') + 1);
  std::string safe;
  for (char c : leaf) safe += (isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-') ? c : '_';
  if (safe.empty()) safe = "Module";
  return std::to_string(index) + "-" + safe.substr(0, 64);
}

// The evidence behind the process image, kept alive while layers point into it.
struct Evidence {
  std::optional<evidence::DecryptedStreams> decrypted;
  File live_core;  // recover --pid: the in-memory core
  std::shared_ptr<layers::FileLayer> file;  // the core
  json::Json description;
  // A whole-memory capture instead (protocol/doc/physical-capture.md).
  std::optional<evidence::DecryptedStreams> physical;
  std::optional<GpuEvidence> gpu;  // the CUDA core dump beside either
};

// A live process: mlfx-agent (the one program that captures) freezes it and writes its core
// into an in-memory file of ours, the target frozen only for the read; then it is analysed
// like any core, so the analysis never sees memory change under it.
Result<Evidence> capture_live(const RecoverOptions& o) {
  Evidence ev;
  MLFX_ASSIGN(std::string agent, find_companion_program("mlfx-agent"));
  MLFX_ASSIGN(File core, File::create_memory("mlfx-live-core"));
  MLFX_ASSIGN(File context_file, File::create_memory("mlfx-live-context"));
  constexpr int kContextFd = 3;
  MLFX_ASSIGN(int status, run_with_descriptors({agent, "core", "--pid", std::to_string(o.pid), "--out", "-",
                                                "--context", "/dev/fd/" + std::to_string(kContextFd)},
                                               {{core.fd(), STDOUT_FILENO}, {context_file.fd(), kContextFd}}));
  if (status != 0)
    return fail(Errc::kIo, "mlfx-agent could not capture pid " + std::to_string(o.pid) + " (exit status " +
                               std::to_string(status) + "; its message is above)");
  MLFX_ASSIGN(std::string context_text, read_small_file(context_file.path(), 256u << 20));
  json::Json context = json::Json::parse(context_text, nullptr, false);
  if (context.is_discarded() || !context.is_object())
    return fail(Errc::kBadFormat, "mlfx-agent wrote no capture context for pid " + std::to_string(o.pid));
  MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> layer, layers::FileLayer::open(core.path()));
  ev.description = {{"kind", "live process"},
                    {"pid", o.pid},
                    {"method", "frozen with ptrace by mlfx-agent, memory read into an in-memory ELF core, thawed"},
                    {"capture_program", agent},
                    {"timings", context.value("timings", json::Json::object())},
                    {"core_size", layer->size()}};
  ev.file = std::move(layer);
  ev.live_core = std::move(core);
  return ev;
}

Result<Evidence> open_evidence(const RecoverOptions& o) {
  if (o.input.empty()) return capture_live(o);
  Evidence ev;
  MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> file, layers::FileLayer::open(o.input));
  if (file->size() == 0) return fail(Errc::kBadFormat, o.input + " is empty");
  const uint8_t* magic = file->view(0, bundle::kFileMagic.size());
  if (magic && std::equal(bundle::kFileMagic.begin(), bundle::kFileMagic.end(), magic)) {
    if (o.lab_key.empty())
      return fail(Errc::kInvalidArgument, o.input + " is a sealed bundle; give the lab key with --key");
    MLFX_ASSIGN(crypto::SecretKeyFile lab, crypto::load_secret_key_file(o.lab_key));
    MLFX_ASSIGN(evidence::DecryptedStreams d,
                evidence::decrypt_streams_to_memory(o.input, lab, {"core", "memory", "context", "pagemap", "moved", "kallsyms", "btf", "gpu-core", "gpu-context"},
                                                    {o.trusted_devices_dir, o.show_progress}));
    ev.description = {{"kind", "mlfx bundle"},
                      {"path", o.input},
                      {"bundle_id", d.manifest.bundle_id_hex()},
                      {"case_id", d.manifest.case_id},
                      {"device", d.manifest.device.id},
                      {"device_key", d.manifest.device.key_fingerprint},
                      {"verification", d.report.to_json()}};
    if (!d.find("core")) {
      if (!d.find("memory") || !d.find("context"))
        return fail(Errc::kBadFormat, o.input + " holds neither a process core ('core') nor a physical image with its "
                                                "capture context ('memory' and 'context')");
      ev.description["kind"] = "mlfx bundle (whole memory)";
      ev.description["memory_sha256"] = d.manifest.find_stream("memory")->sha256;
      ev.physical = std::move(d);
      return ev;
    }
    MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> core, layers::FileLayer::open(d.find("core")->path()));
    ev.description["core_sha256"] = d.manifest.find_stream("core")->sha256;
    ev.file = std::move(core);
    ev.decrypted = std::move(d);
    return ev;
  }
  if (layers::LimeLayer::probe(*file))
    return fail(Errc::kUnsupported, o.input + " is a bare LiME image: recovering processes from it needs the capture context "
                                              "recorded beside it; recover from the mlfx bundle that holds both "
                                              "(mlfx-agent capture --source lime|kmod)");
  const uint8_t* elf = file->view(0, 4);
  if (!elf || std::memcmp(elf, "\x7f" "ELF", 4) != 0)
    return fail(Errc::kBadFormat, o.input + " is neither an ELF core dump nor an mlfx bundle");
  ev.description = {{"kind", "ELF core"}, {"path", o.input}, {"size", file->size()}};
  ev.file = std::move(file);
  return ev;
}

// Storage bytes for the exporters: zero-copy from the image when contiguous, else one copy
// per range, made only when the image holds every byte and paid from the export budget.
class StorageBytes {
 public:
  explicit StorageBytes(uint64_t& budget) : budget_(budget) {}
  // The bytes in `mem` (the process image, or the GPU dump), and where they also lie in the
  // evidence file when they are one run of it.
  Result<exporters::SourceBytes> get(const layers::Layer& mem, uint64_t addr, uint64_t size) {
    if (size == 0) return exporters::SourceBytes{};
    if (const uint8_t* p = mem.view(addr, size))
      return exporters::SourceBytes(ByteView(p, size), mem.file_place(addr, size).value_or(FilePlace{}));
    const auto key = std::make_tuple(&mem, addr, size);
    if (auto it = copies_.find(key); it != copies_.end()) return exporters::SourceBytes(ByteView(it->second));
    const std::string what = "storage of " + std::to_string(size) + " bytes at " + hex_address(addr);
    if (!mem.is_mapped(addr, size)) return fail(Errc::kInvalidAddress, what + " is not all in the image");
    if (size > budget_) return fail(Errc::kUnsupported, what + ": its copy would exceed the export budget");
    budget_ -= size;
    Bytes& copy = copies_[key];
    copy.resize(size);
    MLFX_TRY(mem.read(addr, copy.data(), size));
    return exporters::SourceBytes(ByteView(copy));
  }

 private:
  uint64_t& budget_;
  std::map<std::tuple<const layers::Layer*, uint64_t, uint64_t>, Bytes> copies_;
};

// Bytes the exports may write in all: twice the image, plus 256 MiB. Hostile tensors can claim
// far more than the image holds (zero strides, many views of one storage, overlapping
// storages, millions of keys); each tensor pays its contiguous bytes (safetensors) plus, the
// first time a model names it, its storage (state_dict.pt), and its key in both headers.
uint64_t export_budget(const layers::ProcessFacts& process) {
  return 2 * process.image_bytes + (uint64_t{256} << 20);
}
constexpr size_t kMaxModels = 256;  // root modules exported, largest first
constexpr uint64_t kMetaBytes = 2048;  // what one tensor's record and architecture.json entry cost in memory
constexpr size_t kMaxMissingListed = 1000;
constexpr uint64_t kEntryBytes = 1024;  // what one tensor adds to the files beside its bytes and key
constexpr uint64_t kMinExportBytes = 64 * 1024;  // below it a model is counted, not walked

// Tensors alive outside every model: a serving process's last input and output are among
// them. Small ones are saved so that `mlfx rehost --verify` can replay what a model computed.
constexpr uint64_t kLooseTensorMaxBytes = uint64_t{64} << 20, kLooseTotalMaxBytes = uint64_t{256} << 20;
constexpr size_t kLooseMaxCount = 20000;

// The tracked objects that are modules, and those that are tensors, in tracked order: one pass
// that reads each object's type once and checks each type once.
struct TrackedKinds {
  std::vector<uint64_t> modules, tensors;
};
TrackedKinds sort_tracked(const std::vector<uint64_t>& tracked, const frontends::cpython::ObjectReader& objects,
                          frontends::torch::ModuleWalker& walker, const frontends::torch::TensorReader& tensors,
                          Diagnostics& diag) {
  enum : uint8_t { kModule = 1, kTensor = 2 };
  std::unordered_map<uint64_t, uint8_t> kind_of_type;
  TrackedKinds out;
  for (uint64_t obj : tracked) {
    if (!diag.in_time("sorting the tracked objects")) break;
    auto type = objects.type_of(obj);
    if (!type) continue;
    auto [kind, fresh] = kind_of_type.try_emplace(*type, 0);
    if (fresh) {
      auto module = walker.is_module_type(*type);
      auto tensor = tensors.is_tensor_type(*type);
      kind->second = (module && *module ? kModule : 0) | (tensor && *tensor ? kTensor : 0);
    }
    if (kind->second & kModule) out.modules.push_back(obj);
    if (kind->second & kTensor) out.tensors.push_back(obj);
  }
  return out;
}

Result<json::Json> export_loose_tensors(const std::vector<uint64_t>& tensor_objects,
                                        frontends::torch::TensorReader& tensors, StorageBytes& storage, TensorMemory& memory,
                                        const std::set<uint64_t>& model_tensors, const std::string& out_dir,
                                        Diagnostics& diag) {
  std::vector<exporters::TensorRecord> records;
  json::Json listed = json::Json::array();
  uint64_t total = 0, unlisted = 0;
  for (uint64_t obj : tensor_objects) {
    if (!diag.in_time("looking for loose tensors")) break;
    if (model_tensors.count(obj)) continue;
    auto t = tensors.read(obj);
    if (!t) continue;
    if (listed.size() >= kLooseMaxCount) {  // the listing is bounded too
      ++unlisted;
      continue;
    }
    const exporters::DtypeInfo* dtype = exporters::find_dtype(t->scalar_type);
    json::Json e = {{"name", hex_address(obj)}, {"python_class", std::string(t->python_class)},
                    {"dtype", dtype ? std::string(dtype->torch_name) : "unknown"}, {"shape", t->sizes},
                    {"device", device_name(*t)}};
    std::string skipped;
    exporters::TensorRecord r;
    r.key = hex_address(obj);
    r.scalar_type = t->scalar_type;
    r.shape = t->sizes;
    r.strides = t->strides;
    r.storage_offset = t->storage_offset;
    auto size = exporters::contiguous_size(r);
    if (t->device_type != 0 && t->device_type != 1) skipped = "not in host or GPU memory";
    else if (!dtype || dtype->safetensors_name.empty()) skipped = "dtype not expressible in safetensors";
    else if (!size || *size > kLooseTensorMaxBytes || total + *size > kLooseTotalMaxBytes) skipped = "too large";
    else if (t->storage_bytes > kLooseTotalMaxBytes) skipped = "storage too large";
    if (skipped.empty()) {
      auto mem = memory.layer_for(*t);
      auto data = mem ? storage.get(**mem, t->data, t->storage_bytes) : fail(mem.error());
      r.storage = {t->storage, data ? data->bytes : ByteView{}, t->storage_bytes, "cpu",
                   data ? data->place : FilePlace{}};
      if (!data) skipped = "storage unreadable";
      else if (!exporters::validate(r)) skipped = "inconsistent layout";
    }
    e["saved"] = skipped.empty();
    if (skipped.empty()) {
      total += *size;
      records.push_back(std::move(r));
    } else {
      e["reason"] = skipped;
    }
    listed.push_back(std::move(e));
  }
  const std::string dir = out_dir + "/tensors";
  if (mkdir(dir.c_str(), 0750) != 0) return fail(Errc::kIo, "cannot create " + dir + ": " + errno_text(errno));
  if (!records.empty()) MLFX_TRY(exporters::write_safetensors(dir + "/loose.safetensors", records, {{"format", "pt"}}));
  MLFX_TRY(exporters::write_export_file(dir + "/loose.json", listed.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n", 0640));
  if (unlisted) diag.warn("loose tensors: " + std::to_string(unlisted) + " more not listed");
  return json::Json{{"found", listed.size() + unlisted}, {"saved", records.size()}, {"saved_bytes", total},
                    {"file", records.empty() ? json::Json(nullptr) : json::Json("tensors/loose.safetensors")}};
}

// ---- one model --------------------------------------------------------------------------

// What every model's export shares.
struct ModelExport {
  const frontends::torch::ModuleWalker& walker;
  frontends::torch::TensorReader& tensors;
  TensorMemory& memory;  // the process image, and the GPU dump where there is one
  Diagnostics& diag;
  uint64_t& export_left;
  std::set<uint64_t>& model_tensors;  // every tensor a model names (not loose)
  const std::string& source;
};

// One state_dict entry as a record whose bytes are in the image, or why not.
Result<exporters::TensorRecord> record_for(ModelExport& x, const frontends::torch::StateEntry& entry,
                                           const frontends::torch::TensorInfo& t, StorageBytes& storage,
                                           bool new_storage) {
  MLFX_ASSIGN(const layers::Layer* mem, x.memory.layer_for(t));
  exporters::TensorRecord r;
  r.key = entry.key;
  r.scalar_type = t.scalar_type;
  r.shape = t.sizes;
  r.strides = t.strides;
  r.storage_offset = t.storage_offset;
  MLFX_ASSIGN(uint64_t size, exporters::contiguous_size(r));
  // Its bytes in the safetensors file, its storage in the .pt the first time, its key in both
  // headers and its entry in architecture.json.
  const uint64_t cost = size + (new_storage ? t.storage_bytes : 0) + 2 * entry.key.size() + kEntryBytes;
  if (size > x.export_left || cost > x.export_left)
    return fail(Errc::kUnsupported, "its " + std::to_string(size) + " bytes would exceed the export budget (" +
                                        std::to_string(x.export_left) + " bytes left of twice the image + 256 MiB)");
  x.export_left -= cost;
  MLFX_ASSIGN(exporters::SourceBytes data, storage.get(*mem, t.data, t.storage_bytes));
  r.storage = {t.storage, data.bytes, t.storage_bytes, "cpu", data.place};
  MLFX_TRY(exporters::validate(r));
  return r;
}

// The tensor's layout, so that a rehost can rebuild strides and shared storages exactly.
json::Json tensor_meta_of(const frontends::torch::TensorInfo& t, const frontends::torch::StateEntry& entry) {
  const exporters::DtypeInfo* dtype = exporters::find_dtype(t.scalar_type);
  return {{"python_class", std::string(t.python_class)}, {"address", hex_address(t.object)},
          {"storage", hex_address(t.storage)}, {"data", hex_address(t.data)}, {"device", device_name(t)},
          {"buffer", entry.is_buffer},
          {"dtype", dtype ? std::string(dtype->torch_name) : "unknown"}, {"shape", t.sizes}, {"stride", t.strides},
          {"storage_offset", t.storage_offset}, {"storage_bytes", t.storage_bytes}, {"persistent", entry.persistent}};
}

// The records of one model's state_dict, as far as the budgets allow.
struct ModelRecords {
  std::vector<exporters::TensorRecord> records, non_persistent;
  json::Json tensor_meta = json::Json::object(), missing = json::Json::array();
  size_t missing_count = 0;
  uint64_t bytes = 0, parameters = 0, meta_bytes = 0;

  void miss(const std::string& key) {
    if (missing_count++ < kMaxMissingListed) missing.push_back(key);
  }
};

ModelRecords read_records(ModelExport& x, const std::string& name, const frontends::torch::StateDict& sd,
                          StorageBytes& storage) {
  ModelRecords out;
  std::set<std::string> keys;
  std::set<uint64_t> storages;
  std::string stop;  // why the rest is listed missing, not read (said once)
  for (const auto& entry : sd.entries) {
    x.model_tensors.insert(entry.tensor);
    const uint64_t meta = kMetaBytes + 2 * entry.key.size();
    if (stop.empty()) {
      if (x.export_left < kEntryBytes + 2 * entry.key.size())
        stop = "the export budget (twice the image + 256 MiB) is spent";
      else if (!x.diag.spend(meta, "exporting models")) stop = x.diag.exhausted();
      if (!stop.empty()) x.diag.warn(name + ": " + entry.key + " and the tensors after it not exported: " + stop);
    }
    if (!stop.empty()) {
      out.miss(entry.key);
      continue;
    }
    out.meta_bytes += meta;
    auto t = x.tensors.read(entry.tensor);
    Result<exporters::TensorRecord> r = !t ? fail(t.error())
                                        : !keys.insert(entry.key).second
                                            ? fail(Errc::kBadFormat, "the key appears twice (names with dots?)")
                                            : record_for(x, entry, *t, storage, !storages.count(t->storage));
    if (!r) {
      x.diag.warn(name + ": " + entry.key + ": " + r.error().to_string());
      out.miss(entry.key);
      continue;
    }
    storages.insert(t->storage);
    if (entry.persistent) out.bytes += t->storage_bytes;
    if (!entry.is_buffer) out.parameters += static_cast<uint64_t>(t->numel);
    out.tensor_meta[entry.key] = tensor_meta_of(*t, entry);
    (entry.persistent ? out.records : out.non_persistent).push_back(std::move(*r));
  }
  return out;
}

// architecture.json as far as the export budget allows.
std::string architecture_text(ModelExport& x, uint64_t root, json::Json tensor_meta, std::vector<std::string>& problems) {
  json::Json arch = x.walker.architecture(root, x.export_left);
  arch["tensors"] = std::move(tensor_meta);
  std::string text = arch.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n";
  if (text.size() > x.export_left) {
    problems.push_back("architecture.json cut to its root: the export budget is spent");
    text = json::Json{{"path", ""}, {"address", hex_address(root)}, {"class", arch["class"]},
                      {"error", problems.back()}}.dump(1) + "\n";
  }
  x.export_left -= std::min<uint64_t>(text.size(), x.export_left);
  return text;
}

// Writes models/<n>-<Class>/: state_dict.safetensors and .pt, non_persistent.safetensors,
// architecture.json. Damage gives an incomplete model with diagnostics; only an I/O error
// of the lab machine fails the recovery.
Result<json::Json> export_model(ModelExport& x, size_t n, uint64_t root, const std::string& models_dir) {
  const auto* m = x.walker.module(root);
  const std::string name = dir_name(n, std::string(m->class_name)), dir = models_dir + "/" + name;
  json::Json model = {{"index", n}, {"class", std::string(m->class_name)}, {"address", hex_address(root)}};
  StorageBytes storage(x.export_left);
  frontends::torch::StateDict sd;
  size_t unread = 0;  // a model met once the export budget is spent is counted, not walked
  if (x.export_left < kMinExportBytes) {
    sd.problems.push_back("not exported: the export budget (twice the image + 256 MiB) is spent");
    unread = x.walker.tensor_count(root);
  } else {
    sd = x.walker.state_dict(root, /*with_non_persistent=*/true);
  }
  for (const auto& p : sd.problems) x.diag.warn(name + ": " + p);
  ModelRecords rec = read_records(x, name, sd, storage);
  rec.missing_count += unread;
  if (mkdir(dir.c_str(), 0750) != 0) return fail(Errc::kIo, "cannot create " + dir + ": " + errno_text(errno));
  exporters::SafetensorsMetadata meta = {{"format", "pt"}, {"mlfx.class", std::string(m->class_name)},
                                         {"mlfx.source", x.source}};
  json::Json files = json::Json::array();
  // A file the image's contents make unwritable is a diagnostic; the lab's own I/O errors fail.
  auto written = [&](Status st, const char* file) -> Status {
    if (st) return files.push_back(file), Status{};
    if (st.error().code() == Errc::kIo) return fail(std::move(st).error());
    x.diag.warn(dir + "/" + file + " not written: " + st.error().to_string());
    return {};
  };
  // The two formats are written side by side: each is a pass over the same storage bytes.
  auto safetensors = std::async(std::launch::async, [&] {
    return exporters::write_safetensors(dir + "/state_dict.safetensors", rec.records, meta);
  });
  Status pt = exporters::write_torch_state_dict(dir + "/state_dict.pt", rec.records);
  MLFX_TRY(written(safetensors.get(), "state_dict.safetensors"));
  MLFX_TRY(written(std::move(pt), "state_dict.pt"));
  // Not part of state_dict(), but the model's forward may read them: a rehost needs them.
  if (!rec.non_persistent.empty())
    MLFX_TRY(written(exporters::write_safetensors(dir + "/non_persistent.safetensors", rec.non_persistent, meta),
                     "non_persistent.safetensors"));
  const std::string arch = architecture_text(x, root, std::move(rec.tensor_meta), sd.problems);
  MLFX_TRY(exporters::write_export_file(dir + "/architecture.json", arch, 0640));
  x.diag.refund(rec.meta_bytes);  // the tensor metadata is on disk now
  files.push_back("architecture.json");
  model["directory"] = "models/" + name;
  model["tensors"] = rec.records.size();
  model["parameters"] = rec.parameters;
  model["storage_bytes"] = rec.bytes;
  model["complete"] = rec.missing_count == 0 && sd.problems.empty() && files.size() >= 3;
  model["missing"] = std::move(rec.missing);  // the first kMaxMissingListed
  model["missing_count"] = rec.missing_count;
  model["problems"] = sd.problems;
  model["files"] = files;
  return model;
}

// Module ownership cycles as findings: live torch cannot even state_dict() such a module
// (RecursionError), so a cycle in a process that serves a model is suspicious in itself.
json::Json cycle_findings(const frontends::torch::ModuleWalker& walker, const std::vector<uint64_t>& roots) {
  json::Json out = json::Json::array();
  for (const auto& c : walker.cycles()) {
    auto model = std::find(roots.begin(), roots.end(), c.root);
    json::Json modules = json::Json::array();
    for (uint64_t a : c.modules) modules.push_back(hex_address(a));
    std::string summary = "module ownership cycle of " + std::to_string(c.size) + " module(s) (" +
                          (c.edges.empty() ? std::string("?") : c.edges.front()) + (c.edge_count > 1 ? ", ..." : "") +
                          "): live torch cannot state_dict() it; ";
    summary += c.root ? "nothing outside owns it: model root chosen at " + hex_address(c.root) + ", cycle cut"
                      : "inside a model; the cycle is cut in its state_dict";
    out.push_back({{"kind", "module_cycle"}, {"severity", "suspicious"}, {"summary", summary},
                   {"modules", modules}, {"module_count", c.size}, {"edges", c.edges}, {"edge_count", c.edge_count},
                   {"root", c.root ? json::Json(hex_address(c.root)) : json::Json(nullptr)},
                   {"model", model != roots.end() && c.root ? json::Json(model - roots.begin()) : json::Json(nullptr)}});
  }
  return out;
}

// Why the sysroot could not fill the evidence's gaps, for an error message: the refused files
// first (another build), then the missing ones; empty when every file was attached.
std::string sysroot_problems(const layers::SysrootLayer& sysroot) {
  std::vector<const layers::SysrootFile*> bad;
  for (const auto& f : sysroot.files())
    if (!f.attached) bad.push_back(&f);
  if (bad.empty()) return {};
  std::stable_partition(bad.begin(), bad.end(), [](const layers::SysrootFile* f) { return f->refused; });
  std::string out = "sysroot " + sysroot.sysroot() + " lacks " + std::to_string(bad.size()) + " of the " +
                    std::to_string(sysroot.files().size()) + " mapped files the evidence lacks data of";
  for (size_t i = 0; i < bad.size() && i < 3; ++i) out += (i ? "; " : ": ") + bad[i]->path + " " + bad[i]->detail;
  return out + (bad.size() > 3 ? "; ..." : "");
}

// Which files recovery read from the sysroot: a diagnostic each, and every file in the report.
json::Json sysroot_report(const layers::SysrootLayer& sysroot, Diagnostics& diag) {
  json::Json files = json::Json::array();
  size_t attached = 0, read = 0;
  for (size_t i = 0; i < sysroot.files().size(); ++i) {
    const layers::SysrootFile& f = sysroot.files()[i];
    const bool was_read = sysroot.was_read(i);
    attached += f.attached;
    read += was_read;
    if (was_read)
      diag.warn("sysroot: read " + f.path + " from " + f.host_path + " (" +
                (f.verified ? "build-id " + f.build_id + " matches the " + f.verified_by : f.detail) + ")");
    files.push_back({{"path", f.path}, {"host_path", f.host_path}, {"attached", f.attached}, {"read", was_read},
                     {"verified", f.verified}, {"verified_by", f.verified ? json::Json(f.verified_by) : json::Json(nullptr)},
                     {"refused", f.refused}, {"build_id", f.build_id}, {"bytes", f.bytes}, {"detail", f.detail}});
  }
  diag.warn("sysroot " + sysroot.sysroot() + ": " + std::to_string(attached) + " of " +
            std::to_string(sysroot.files().size()) + " mapped files lacking data in the evidence were available, " +
            std::to_string(read) + " were read");
  return {{"path", sysroot.sysroot()}, {"files", files}};
}

}  // namespace

namespace {

// The typed view of a report.json this file just built.
RecoverResult summarize(json::Json report) {
  RecoverResult r;
  const json::Json& process = report["process"];
  r.pid = process["pid"].get<int32_t>();
  r.command = process["command"].get<std::string>();
  r.python_version = report["python"]["version"].get<std::string>();
  r.gc_objects = report["python"]["gc_objects"].get<uint64_t>();
  r.torch_modules = report["torch"]["modules"].get<uint64_t>();
  r.torch_loaded = report["torch"]["loaded"].get<bool>();
  for (const auto& m : report["models"])
    r.models.push_back({m["directory"].get<std::string>(), m["class"].get<std::string>(), m["tensors"].get<uint64_t>(),
                        m["parameters"].get<uint64_t>(), m["complete"].get<bool>()});
  for (const auto& f : report["findings"]) r.findings.push_back({f["severity"].get<std::string>(), f["summary"].get<std::string>()});
  r.warnings = report["diagnostics"]["warnings"].size();
  if (const auto& e = report["limits"]["exhausted"]; e.is_string()) r.limit_exhausted = e.get<std::string>();
  const json::Json verification = report["input"].value("verification", json::Json::object());
  if (const auto it = verification.find("capture_incomplete"); it != verification.end() && it->is_string())
    r.capture_incomplete = it->get<std::string>();
  r.identity_unverified = verification.value("verdict", "") == evidence::verdict_name(evidence::Verdict::kIdentityUnverified);
  r.report = std::move(report);
  return r;
}

}  // namespace

namespace {

// What the evidence adds to the analysis of its process image: the mapped files' data it
// lacks (a hint), or read from a sysroot.
struct ImageSource {
  std::string missing_hint;
  std::shared_ptr<const layers::SysrootLayer> sysroot;
  const GpuEvidence* gpu = nullptr;  // the process's GPU memory, when captured
};

// With --sysroot: the file data the evidence lacks read from the lab's copy of the captured
// host's files (build-id checked), on top of `image`'s memory. Without: a hint of what
// `evidence` ("the core") lacks and why, for the case that recovery stops for want of it.
Result<ImageSource> attach_file_data(const RecoverOptions& o, layers::ProcessImage& image, const std::string& evidence,
                                     const std::string& why_lacking, Diagnostics& diag) {
  ImageSource src;
  if (!o.sysroot.empty()) {
    MLFX_ASSIGN(src.sysroot, layers::SysrootLayer::open(image, o.sysroot));
    for (const auto& w : src.sysroot->warnings()) diag.warn(w);
    for (const auto& f : src.sysroot->files())
      if (!f.attached) diag.warn("sysroot: " + f.path + " not read from " + f.host_path + ": " + f.detail);
    image.memory = src.sysroot;
  } else if (auto missing = layers::missing_file_data(image); missing.bytes) {
    src.missing_hint = evidence + " lacks " +
                       human_bytes(double(missing.bytes)) + " of file-backed memory in " +
                       std::to_string(missing.paths.size()) + " mapped file(s) (" + missing.paths.front() +
                       (missing.paths.size() > 1 ? ", ..." : "") + "): " + why_lacking +
                       "; rerun with --sysroot / on the captured host, or --sysroot DIR holding a copy of its files";
  }
  return src;
}

// The process's architecture, by its ELF machine number.
std::string machine_name(uint16_t machine) {
  switch (machine) {
    case EM_X86_64: return "x86_64";
    case EM_AARCH64: return "aarch64";
    case EM_386: return "i386";
    case EM_ARM: return "arm";
    default: return "EM " + std::to_string(machine);
  }
}

// Every model of one process image into `out_dir` (new or empty), with its report.json.
Result<RecoverResult> recover_process(const RecoverOptions& o, const std::string& out_dir, const layers::ProcessImage& image,
                                      const ImageSource& src, json::Json input, Diagnostics& diag, json::Json timings,
                                      Clock::time_point t0) {
  for (const auto& w : image.warnings) diag.warn(w);
  if (!src.missing_hint.empty()) diag.warn(src.missing_hint);
  const layers::Layer& mem = *image.memory;
  timings["open_ms"] = ms_since(t0);

  auto t1 = Clock::now();
  auto located = frontends::cpython::PythonRuntime::locate(mem, image.mapped_files, diag);
  // Bytes that are not there (not damage) may be the file data the core left out.
  const bool absent = !located && (located.error().code() == Errc::kNotFound ||
                                   located.error().code() == Errc::kInvalidAddress);
  if (absent && !src.missing_hint.empty())
    return fail(Error(located.error().code(), located.error().to_string() + "; " + src.missing_hint));
  if (absent && src.sysroot) {
    const std::string problems = sysroot_problems(*src.sysroot);
    if (!problems.empty()) return fail(Error(located.error().code(), located.error().to_string() + "; " + problems));
  }
  MLFX_ASSIGN(auto runtime, std::move(located));
  timings["locate_ms"] = ms_since(t1);
  auto t_gc = Clock::now();
  frontends::cpython::ObjectReader objects(mem, runtime.layout(), diag);
  std::vector<uint64_t> tracked = runtime.tracked_objects(diag);
  timings["gc_walk_ms"] = ms_since(t_gc);

  const std::optional<std::string> torch_version = runtime.module_string(objects, "torch.version", "__version__");
  auto t2 = Clock::now();
  frontends::torch::ModuleWalker walker(objects, diag);
  frontends::torch::TensorReader tensors(objects);
  const TrackedKinds kinds = sort_tracked(tracked, objects, walker, tensors, diag);
  walker.scan(kinds.modules);
  std::vector<uint64_t> roots = walker.roots();
  if (roots.size() > kMaxModels) {
    diag.warn(std::to_string(roots.size() - kMaxModels) + " more root modules (the smallest) not exported: at most " +
              std::to_string(kMaxModels) + " models are written");
    roots.resize(kMaxModels);
  }
  timings["module_scan_ms"] = ms_since(t2);

  MLFX_TRY(make_output_dir(out_dir, {"report.json", "models", "tensors"}));
  const std::string models_dir = out_dir + "/models";
  if (!roots.empty() && mkdir(models_dir.c_str(), 0750) != 0)
    return fail(Errc::kIo, "cannot create " + models_dir + ": " + errno_text(errno));

  auto t3 = Clock::now();
  uint64_t export_left = export_budget(image.facts) + (src.gpu ? 2 * (src.gpu->dump->info().global_bytes +
                                                                       src.gpu->dump->info().managed_bytes) : 0);
  std::set<uint64_t> model_tensors;
  TensorMemory memory(mem, src.gpu);
  ModelExport x{walker, tensors, memory, diag, export_left, model_tensors, o.input};
  json::Json models = json::Json::array();
  for (size_t n = 0; n < roots.size(); ++n) {
    MLFX_ASSIGN(json::Json model, export_model(x, n, roots[n], models_dir));
    models.push_back(std::move(model));
  }
  json::Json loose = json::Json::object();
  if (torch_version) {
    StorageBytes storage(export_left);
    MLFX_ASSIGN(loose, export_loose_tensors(kinds.tensors, tensors, storage, memory, model_tensors, out_dir, diag));
  }
  timings["export_ms"] = ms_since(t3);
  timings["total_ms"] = ms_since(t0);
  if (src.sysroot) input["sysroot"] = sysroot_report(*src.sysroot, diag);

  json::Json report = {
      {"tool", {{"name", kToolName}, {"version", kToolVersion}}},
      {"created_utc", utc_timestamp()},
      {"input", input},
      {"process",
       {{"pid", image.facts.pid}, {"command", image.facts.command}, {"args", image.facts.args},
        {"threads", image.facts.threads}, {"mapped_files", image.mapped_files.size()},
        {"segments", image.facts.segments}, {"machine", machine_name(image.facts.elf_machine)}}},
      {"python",
       {{"version", runtime.version()}, {"binary", runtime.binary()}, {"layout", runtime.layout().name},
        {"calibration", runtime.calibration()}, {"runtime", hex_address(runtime.runtime())}, {"gc_state", hex_address(runtime.gc_state())},
        {"gc_objects", tracked.size()}}},
      {"torch", {{"version", torch_version ? json::Json(*torch_version) : json::Json(nullptr)},
                 {"loaded", torch_version.has_value()},
                 {"layout", tensors.layout()                  ? tensors.layout_name()
                            : !tensors.unsupported().empty() ? tensors.unsupported()
                                                             : "none (no tensors read)"},
                 {"modules", walker.modules().size()}}},
      {"models", models},
      {"loose_tensors", loose},
      {"gpu", memory.report()},
      {"findings", cycle_findings(walker, roots)},
      {"limits", {{"memory_bytes", diag.limits().memory_bytes}, {"seconds", diag.limits().seconds},
                  {"memory_spent_bytes", diag.spent()}, {"export_bytes_left", export_left},
                  {"exhausted", diag.exhausted().empty() ? json::Json(nullptr) : json::Json(diag.exhausted())}}},
      {"diagnostics", {{"warnings", diag.warnings()}, {"dropped", diag.dropped()}}},
      {"timings", timings}};
  MLFX_TRY(exporters::write_export_file(out_dir + "/report.json", report.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n", 0640));
  return summarize(std::move(report));
}

}  // namespace


namespace {

// One process to recover from a whole-memory capture, and how its address space is rebuilt:
// from the pagemap captured while it was frozen, else from its own page tables.
struct PhysicalProcess {
  int32_t pid = 0;
  std::string command;
  bool pagemap = false;
  std::optional<kernel::Task> task;
};

// A whole-memory capture: the process asked for (--pid), or every user process (those the
// kernel's task list holds, and those with a captured pagemap), each rebuilt from the image
// and recovered exactly like a process capture. Several go to DIR/processes/<pid>/, beside a
// DIR/report.json that lists them.
Result<RecoverResult> recover_physical(const RecoverOptions& o, Evidence& ev, Clock::time_point t0) {
  const evidence::DecryptedStreams& d = *ev.physical;
  MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> memory, layers::FileLayer::open(d.find("memory")->path()));
  MLFX_ASSIGN(std::string context_text, read_small_file(d.find("context")->path(), 256u << 20));
  std::shared_ptr<const layers::Layer> pagemap;
  if (const File* f = d.find("pagemap")) {
    MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> pm, layers::FileLayer::open(f->path()));
    pagemap = std::move(pm);
  }
  std::shared_ptr<const layers::Layer> moved;
  if (const File* f = d.find("moved")) {
    MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> m, layers::FileLayer::open(f->path()));
    moved = std::move(m);
  }
  auto opened = physical::PhysicalImage::open(std::move(memory), context_text, std::move(pagemap), std::move(moved));
  if (!opened) return fail(std::move(opened).error().context(o.input));
  const physical::PhysicalImage& img = *opened;
  if (auto st = img.check_banner(); !st) return fail(std::move(st).error().context(o.input));
  uint64_t image_bytes = 0;
  for (const layers::Segment& r : img.physical().segments()) image_bytes += r.size;
  ev.description["physical"] = {{"source", img.context().source}, {"kernel_banner", img.context().banner},
                                {"ranges", img.physical().segments().size()}, {"bytes", image_bytes},
                                {"unreadable", img.context().document.value("unreadable", json::Json::array())}};

  // The processes: the kernel's task list where it can be walked, and every captured pagemap.
  std::string no_kernel;
  auto kernel_or = kernel::open_captured_kernel(d, img, no_kernel);
  if (!kernel_or) no_kernel = "the kernel could not be found in the image: " + kernel_or.error().to_string();
  const std::unique_ptr<kernel::KernelImage> kernel = kernel_or ? std::move(*kernel_or) : nullptr;
  std::vector<PhysicalProcess> processes;
  Diagnostics walk_diag(o.limits);
  if (kernel)
    for (const kernel::Task& t : kernel->tasks(walk_diag))
      if (t.mm && t.pid == t.tgid && (!o.pid || t.pid == o.pid)) processes.push_back({t.pid, t.comm, false, t});
  for (int32_t pid : img.pids_with_pagemap()) {
    if (o.pid && pid != o.pid) continue;
    auto it = std::find_if(processes.begin(), processes.end(), [&](const PhysicalProcess& p) { return p.pid == pid; });
    if (it == processes.end()) it = processes.insert(processes.end(), {pid, img.context().find(pid)->comm, false, {}});
    it->pagemap = true;
  }
  ev.description["physical"]["processes_from"] =
      kernel ? "the kernel's task list (captured BTF and kallsyms) and the captured pagemaps" : "the captured pagemaps";
  if (!kernel) ev.description["physical"]["kernel_walk"] = no_kernel;

  const double open_ms = ms_since(t0);
  auto one = [&](const PhysicalProcess& p, const std::string& dir) -> Result<RecoverResult> {
    auto t = Clock::now();
    json::Json input = ev.description;
    Diagnostics diag(o.limits);
    layers::ProcessImage image;
    std::string lost_pages;  // what the interpreter's structures may lack: said where they are not found
    if (p.pagemap) {  // captured while frozen: the exact mapping at acquisition
      MLFX_ASSIGN(physical::RebuiltProcess r, img.process(p.pid));
      input["process_source"] = "pagemap";
      input["process_pages"] = r.to_json();
      if (const uint64_t lost = r.pages.not_in_image + r.pages.swapped + r.pages.pfn_hidden)
        lost_pages = std::to_string(lost) + " of the process's " + std::to_string(lost + r.pages.in_image) +
                     " present or swapped pages are not in the image (" + std::to_string(r.pages.not_in_image) +
                     " in RAM the capture did not read: see input.physical.unreadable; " +
                     std::to_string(r.pages.swapped) + " swapped out)";
      image = std::move(r.image);
    } else {
      MLFX_ASSIGN(image, kernel->process_image(*p.task, diag));
      input["process_source"] = "page tables";
    }
    // Clean file pages the kernel had dropped (or never read) are on disk, not in RAM.
    MLFX_ASSIGN(ImageSource src, attach_file_data(o, image, "the image",
                                                  "a physical image holds only the file pages that were in the page "
                                                  "cache (the interpreter's symbol tables may have been dropped)",
                                                  diag));
    if (!lost_pages.empty()) src.missing_hint = lost_pages + (src.missing_hint.empty() ? "" : "; ") + src.missing_hint;
    if (ev.gpu && (!ev.gpu->pid || *ev.gpu->pid == p.pid)) src.gpu = &*ev.gpu;
    return recover_process(o, dir, image, src, std::move(input), diag, {{"open_ms", open_ms + ms_since(t)}}, t);
  };
  if (o.pid) {
    if (processes.empty())
      return fail(Errc::kNotFound, o.input + ": no user process with pid " + std::to_string(o.pid) + " in the image (" +
                                       (kernel ? std::string("not on the kernel's task list, and no pagemap captured for it")
                                               : no_kernel + "; and no pagemap was captured for it") +
                                       "); list them with 'mlfx ps'");
    return one(processes.front(), o.out_dir);
  }
  if (processes.empty())
    return fail(Errc::kNotFound, o.input + ": no process to recover: " +
                                     (kernel ? std::string("the kernel's task list holds no user process")
                                             : no_kernel + ", and no pagemap was captured (mlfx-agent capture --pid)"));

  MLFX_TRY(make_output_dir(o.out_dir, {"report.json", "processes"}));
  const std::string processes_dir = o.out_dir + "/processes";
  if (mkdir(processes_dir.c_str(), 0750) != 0)
    return fail(Errc::kIo, "cannot create " + processes_dir + ": " + errno_text(errno));
  RecoverResult all;
  json::Json listed = json::Json::array();
  for (const PhysicalProcess& p : processes) {
    const std::string rel = "processes/" + std::to_string(p.pid);
    json::Json entry = {{"pid", p.pid}, {"command", p.command}, {"directory", rel},
                        {"source", p.pagemap ? "pagemap" : "page tables"}};
    auto r = one(p, o.out_dir + "/" + rel);
    if (r) {
      entry["result"] = "recovered";
      entry["python"] = r->python_version;
      entry["models"] = r->models.size();
      for (RecoveredModel m : r->models) {
        m.directory = rel + "/" + m.directory;
        all.models.push_back(std::move(m));
      }
      all.warnings += r->warnings;
      all.processes.push_back(std::move(*r));
    } else {
      // A process without CPython (or whose runtime cannot be read) is listed, not fatal.
      const bool not_python = r.error().code() == Errc::kNotFound;
      entry["result"] = not_python ? "no Python runtime found" : "failed";
      entry["detail"] = r.error().to_string();
      rmdir((o.out_dir + "/" + rel).c_str());  // left empty by a failure before any output
    }
    listed.push_back(std::move(entry));
  }
  all.report = {{"tool", {{"name", kToolName}, {"version", kToolVersion}}},
                {"created_utc", utc_timestamp()},
                {"input", ev.description},
                {"processes", listed},
                {"warnings", walk_diag.warnings()},
                {"timings", {{"total_ms", ms_since(t0)}}}};
  MLFX_TRY(exporters::write_export_file(o.out_dir + "/report.json",
                                        all.report.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n", 0640));
  if (all.processes.empty())
    return fail(Errc::kNotFound, "no Python process could be recovered from " + o.input + " (see " + o.out_dir + "/report.json)");
  return all;
}

}  // namespace

Result<RecoverResult> recover(const RecoverOptions& o) {
  auto t0 = Clock::now();
  json::Json timings = json::Json::object();
  Diagnostics diag(o.limits);
  MLFX_ASSIGN(Evidence ev, open_evidence(o));
  const evidence::DecryptedStreams* bundle = ev.decrypted ? &*ev.decrypted : ev.physical ? &*ev.physical : nullptr;
  if (!o.gpu_core.empty() && o.input.empty())
    return fail(Errc::kInvalidArgument, "--gpu-core goes with a captured input (an ELF core), not with a live --pid");
  MLFX_ASSIGN(ev.gpu, open_gpu_evidence(bundle, o.gpu_core));
  if (ev.physical) return recover_physical(o, ev, t0);
  if (o.pid && !o.input.empty())
    return fail(Errc::kInvalidArgument, "--pid with an input picks a process in a whole-memory capture; " + o.input +
                                            " holds a single process: leave --pid out");
  auto opened = layers::ElfCoreLayer::open(ev.file);
  if (!opened) return fail(std::move(opened).error().context(o.input));
  std::shared_ptr<const layers::ElfCoreLayer> core = std::move(*opened);
  // From here on only the process image: its memory and mapped files, no ELF-core types.
  layers::ProcessImage image = layers::ElfCoreLayer::process_image(std::move(core));
  // gdb's sysroot over the core: file-backed memory the core left out, read from lab files.
  MLFX_ASSIGN(ImageSource src, attach_file_data(o, image, "the core",
                                                "gcore and kernel cores leave out read-only file data such as type names",
                                                diag));
  if (ev.gpu) src.gpu = &*ev.gpu;
  timings["open_ms"] = ms_since(t0);
  return recover_process(o, o.out_dir, image, src, std::move(ev.description), diag, std::move(timings), t0);
}

}  // namespace mlfx::recovery
