#include "recovery/recover.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <deque>
#include <future>
#include <map>
#include <set>
#include <memory>

#include "capture/process/process_capture.h"
#include "evidence/bundle_check.h"
#include "exporters/safetensors_writer.h"
#include "exporters/torch_pt_writer.h"
#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "frontends/torch/module_walker.h"
#include "frontends/torch/tensor_reader.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "layers/sysroot_layer.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
#include "mlfx/base/progress.h"
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
  std::optional<evidence::DecryptedStream> decrypted;
  File live_core;  // recover --pid: the in-memory core
  std::shared_ptr<layers::FileLayer> file;
  json::Json description;
};

// A live process: its core is captured into memory (the target frozen only for the read) and
// analysed like any core, so the analysis never sees memory change under it.
Result<Evidence> capture_live(const RecoverOptions& o) {
  Evidence ev;
  MLFX_ASSIGN(File core, File::create_memory("mlfx-live-core"));
  agent::process::ProcessCaptureOptions capture;
  capture.pid = o.pid;
  MLFX_ASSIGN(json::Json context, agent::process::capture_process_core(capture, core));
  MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> layer, layers::FileLayer::open(core.path()));
  ev.description = {{"kind", "live process"},
                    {"pid", o.pid},
                    {"method", "frozen with ptrace, memory read into an in-memory ELF core, thawed"},
                    {"timings", context["timings"]},
                    {"core_size", layer->size()}};
  ev.file = std::move(layer);
  ev.live_core = std::move(core);
  return ev;
}

Result<Evidence> open_evidence(const RecoverOptions& o) {
  if (o.pid) return capture_live(o);
  Evidence ev;
  MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> file, layers::FileLayer::open(o.input));
  if (file->size() == 0) return fail(Errc::kBadFormat, o.input + " is empty");
  const uint8_t* magic = file->view(0, bundle::kFileMagic.size());
  if (magic && std::equal(bundle::kFileMagic.begin(), bundle::kFileMagic.end(), magic)) {
    if (o.lab_key.empty())
      return fail(Errc::kInvalidArgument, o.input + " is a sealed bundle; give the lab key with --key");
    MLFX_ASSIGN(crypto::SecretKeyFile lab, crypto::load_secret_key_file(o.lab_key));
    MLFX_ASSIGN(evidence::DecryptedStream d,
                evidence::decrypt_stream_to_memory(o.input, lab, "core", {o.trusted_devices_dir, o.show_progress}));
    MLFX_ASSIGN(std::unique_ptr<layers::FileLayer> core, layers::FileLayer::open(d.file.path()));
    ev.description = {{"kind", "mlfx bundle"},
                      {"path", o.input},
                      {"bundle_id", d.manifest.bundle_id_hex()},
                      {"case_id", d.manifest.case_id},
                      {"device", d.manifest.device.id},
                      {"device_key", d.manifest.device.key_fingerprint},
                      {"core_sha256", d.manifest.find_stream("core")->sha256},
                      {"verification", d.report.to_json()}};
    ev.file = std::move(core);
    ev.decrypted = std::move(d);
    return ev;
  }
  const uint8_t* elf = file->view(0, 4);
  if (!elf || std::memcmp(elf, "\x7f" "ELF", 4) != 0)
    return fail(Errc::kBadFormat, o.input + " is neither an ELF core dump nor an mlfx bundle");
  ev.description = {{"kind", "ELF core"}, {"path", o.input}, {"size", file->size()}};
  ev.file = std::move(file);
  return ev;
}

// Storage bytes for the exporters: zero-copy from the image when contiguous, else a copy.
class StorageBytes {
 public:
  explicit StorageBytes(const layers::Layer& mem) : mem_(mem) {}
  Result<ByteView> get(uint64_t addr, uint64_t size) {
    if (size == 0) return ByteView{};
    if (const uint8_t* p = mem_.view(addr, size)) return ByteView(p, size);
    Bytes& copy = copies_.emplace_back(size);
    MLFX_TRY(mem_.read(addr, copy.data(), size));
    return ByteView(copy);
  }

 private:
  const layers::Layer& mem_;
  std::deque<Bytes> copies_;
};

// Tensors alive outside every model: a serving process's last input and output are among
// them. Small ones are saved so that `mlfx rehost --verify` can replay what a model computed.
constexpr uint64_t kLooseTensorMaxBytes = uint64_t{64} << 20, kLooseTotalMaxBytes = uint64_t{256} << 20;
constexpr size_t kLooseMaxCount = 20000;

Result<json::Json> export_loose_tensors(const std::vector<uint64_t>& tracked, const frontends::cpython::ObjectReader& objects,
                                        frontends::torch::TensorReader& tensors, StorageBytes& storage,
                                        const std::set<uint64_t>& model_tensors, const std::string& out_dir) {
  std::map<uint64_t, bool> tensor_types;
  std::vector<exporters::TensorRecord> records;
  json::Json listed = json::Json::array();
  uint64_t total = 0;
  for (uint64_t obj : tracked) {
    if (model_tensors.count(obj)) continue;
    auto type = objects.type_of(obj);
    if (!type) continue;
    auto known = tensor_types.find(*type);
    if (known == tensor_types.end()) {
      auto is = tensors.is_tensor_type(*type);
      known = tensor_types.emplace(*type, is && *is).first;
    }
    if (!known->second) continue;
    auto t = tensors.read(obj);
    if (!t) continue;
    const exporters::DtypeInfo* dtype = exporters::find_dtype(t->scalar_type);
    json::Json e = {{"name", hex_address(obj)}, {"python_class", t->python_class},
                    {"dtype", dtype ? std::string(dtype->torch_name) : "unknown"}, {"shape", t->sizes}};
    std::string skipped;
    exporters::TensorRecord r;
    r.key = hex_address(obj);
    r.scalar_type = t->scalar_type;
    r.shape = t->sizes;
    r.strides = t->strides;
    r.storage_offset = t->storage_offset;
    auto size = exporters::contiguous_size(r);
    if (t->device_type != 0) skipped = "not in host memory";
    else if (!dtype || dtype->safetensors_name.empty()) skipped = "dtype not expressible in safetensors";
    else if (listed.size() >= kLooseMaxCount) skipped = "too many tensors";
    else if (!size || *size > kLooseTensorMaxBytes || total + *size > kLooseTotalMaxBytes) skipped = "too large";
    if (skipped.empty()) {
      auto data = storage.get(t->data, t->storage_bytes);
      r.storage = {t->storage, data ? *data : ByteView{}, t->storage_bytes, "cpu"};
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
  MLFX_TRY(write_new_file(dir + "/loose.json", listed.dump(1) + "\n", 0640));
  return json::Json{{"found", listed.size()}, {"saved", records.size()}, {"saved_bytes", total},
                    {"file", records.empty() ? json::Json(nullptr) : json::Json("tensors/loose.safetensors")}};
}

// Why the sysroot could not fill the core's gaps, for an error message: the refused files
// first (another build), then the missing ones; empty when every file was attached.
std::string sysroot_problems(const layers::SysrootLayer& sysroot) {
  std::vector<const layers::SysrootFile*> bad;
  for (const auto& f : sysroot.files())
    if (!f.attached) bad.push_back(&f);
  if (bad.empty()) return {};
  std::stable_partition(bad.begin(), bad.end(), [](const layers::SysrootFile* f) { return f->refused; });
  std::string out = "sysroot " + sysroot.sysroot() + " lacks " + std::to_string(bad.size()) + " of the " +
                    std::to_string(sysroot.files().size()) + " mapped files the core left out";
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
                (f.verified ? "build-id " + f.build_id + " matches the core" : f.detail) + ")");
    files.push_back({{"path", f.path}, {"host_path", f.host_path}, {"attached", f.attached}, {"read", was_read},
                     {"verified", f.verified}, {"refused", f.refused}, {"build_id", f.build_id},
                     {"bytes", f.bytes}, {"detail", f.detail}});
  }
  diag.warn("sysroot " + sysroot.sysroot() + ": " + std::to_string(attached) + " of " +
            std::to_string(sysroot.files().size()) + " mapped files lacking data in the core were available, " +
            std::to_string(read) + " were read");
  return {{"path", sysroot.sysroot()}, {"files", files}};
}

}  // namespace

Result<json::Json> recover(const RecoverOptions& o) {
  auto t0 = Clock::now();
  json::Json timings = json::Json::object();
  Diagnostics diag;
  MLFX_ASSIGN(Evidence ev, open_evidence(o));
  auto opened = layers::ElfCoreLayer::open(ev.file);
  if (!opened) return fail(std::move(opened).error().context(o.input));
  std::shared_ptr<const layers::ElfCoreLayer> core = std::move(*opened);
  const layers::CoreInfo& info = core->info();
  for (const auto& w : info.warnings) diag.warn(w);
  std::unique_ptr<layers::SysrootLayer> sysroot;
  std::string missing_hint;  // without --sysroot: what the core lacks, and what to do
  if (!o.sysroot.empty()) {
    MLFX_ASSIGN(sysroot, layers::SysrootLayer::open(core, o.sysroot));
    for (const auto& w : sysroot->warnings()) diag.warn(w);
    for (const auto& f : sysroot->files())
      if (!f.attached) diag.warn("sysroot: " + f.path + " not read from " + f.host_path + ": " + f.detail);
  } else if (auto missing = layers::missing_file_data(*core); missing.bytes) {
    missing_hint = "the core lacks " + human_bytes(double(missing.bytes)) + " of file-backed memory in " +
                   std::to_string(missing.paths.size()) + " mapped file(s) (" + missing.paths.front() +
                   (missing.paths.size() > 1 ? ", ..." : "") +
                   "): gcore and kernel cores leave out read-only file data such as type names; rerun with "
                   "--sysroot / on the captured host, or --sysroot DIR holding a copy of its files";
    diag.warn(missing_hint);
  }
  const layers::Layer& mem = sysroot ? static_cast<const layers::Layer&>(*sysroot) : *core;
  timings["open_ms"] = ms_since(t0);

  auto t1 = Clock::now();
  auto located = frontends::cpython::PythonRuntime::locate(mem, info.files, diag);
  // Bytes that are not there (not damage) may be the file data the core left out.
  const bool absent = !located && (located.error().code() == Errc::kNotFound ||
                                   located.error().code() == Errc::kInvalidAddress);
  if (absent && !missing_hint.empty())
    return fail(Error(located.error().code(), located.error().to_string() + "; " + missing_hint));
  if (absent && sysroot) {
    const std::string problems = sysroot_problems(*sysroot);
    if (!problems.empty()) return fail(Error(located.error().code(), located.error().to_string() + "; " + problems));
  }
  MLFX_ASSIGN(auto runtime, std::move(located));
  timings["locate_ms"] = ms_since(t1);
  auto t_gc = Clock::now();
  frontends::cpython::ObjectReader objects(mem, runtime.layout());
  std::vector<uint64_t> tracked = runtime.tracked_objects(diag);
  timings["gc_walk_ms"] = ms_since(t_gc);

  const std::optional<std::string> torch_version = runtime.module_string(objects, "torch.version", "__version__");
  auto t2 = Clock::now();
  frontends::torch::ModuleWalker walker(objects, diag);
  walker.scan(tracked);
  std::vector<uint64_t> roots = walker.roots();
  timings["module_scan_ms"] = ms_since(t2);

  MLFX_TRY(make_output_dir(o.out_dir, {"report.json", "models", "tensors"}));
  const std::string models_dir = o.out_dir + "/models";
  if (!roots.empty() && mkdir(models_dir.c_str(), 0750) != 0)
    return fail(Errc::kIo, "cannot create " + models_dir + ": " + errno_text(errno));

  auto t3 = Clock::now();
  frontends::torch::TensorReader tensors(objects);
  StorageBytes storage(mem);
  json::Json models = json::Json::array();
  for (size_t n = 0; n < roots.size(); ++n) {
    const auto* m = walker.module(roots[n]);
    json::Json model = {{"index", n}, {"class", m->class_name}, {"address", hex_address(roots[n])}};
    std::vector<exporters::TensorRecord> records, non_persistent;
    json::Json missing = json::Json::array(), tensor_meta = json::Json::object();
    uint64_t bytes = 0, parameters = 0;
    for (const auto& entry : walker.state_dict(roots[n], /*with_non_persistent=*/true)) {
      auto t = tensors.read(entry.tensor);
      if (t && t->device_type != 0) {
        diag.warn(entry.key + ": tensor on device type " + std::to_string(t->device_type) +
                  "; its memory is not in a host memory image");
        missing.push_back(entry.key);
        continue;
      }
      Result<ByteView> data = t ? storage.get(t->data, t->storage_bytes) : fail(t.error());
      if (!t || !data) {
        diag.warn(entry.key + ": " + (t ? data.error() : t.error()).to_string());
        missing.push_back(entry.key);
        continue;
      }
      exporters::TensorRecord r;
      r.key = entry.key;
      r.scalar_type = t->scalar_type;
      r.shape = t->sizes;
      r.strides = t->strides;
      r.storage_offset = t->storage_offset;
      r.storage = {t->storage, *data, t->storage_bytes, "cpu"};
      if (auto st = exporters::validate(r); !st) {
        diag.warn(entry.key + ": " + st.error().to_string());
        missing.push_back(entry.key);
        continue;
      }
      if (entry.persistent) bytes += t->storage_bytes;
      if (!entry.is_buffer) parameters += static_cast<uint64_t>(t->numel);
      // The layout, so that a rehost can rebuild strides and shared storages exactly.
      const exporters::DtypeInfo* dtype = exporters::find_dtype(t->scalar_type);
      tensor_meta[entry.key] = {{"python_class", t->python_class}, {"address", hex_address(t->object)},
                                {"storage", hex_address(t->storage)}, {"data", hex_address(t->data)},
                                {"buffer", entry.is_buffer},
                                {"dtype", dtype ? std::string(dtype->torch_name) : "unknown"},
                                {"shape", t->sizes}, {"stride", t->strides},
                                {"storage_offset", t->storage_offset}, {"storage_bytes", t->storage_bytes},
                                {"persistent", entry.persistent}};
      (entry.persistent ? records : non_persistent).push_back(std::move(r));
    }
    const std::string dir = models_dir + "/" + dir_name(n, m->class_name);
    if (mkdir(dir.c_str(), 0750) != 0) return fail(Errc::kIo, "cannot create " + dir + ": " + errno_text(errno));
    exporters::SafetensorsMetadata meta = {{"format", "pt"}, {"mlfx.class", m->class_name},
                                           {"mlfx.source", o.input}};
    json::Json files = json::Json::array();
    // The two formats are written side by side: each is a pass over the same storage bytes.
    auto safetensors = std::async(std::launch::async, [&] {
      return exporters::write_safetensors(dir + "/state_dict.safetensors", records, meta);
    });
    Status pt = exporters::write_torch_state_dict(dir + "/state_dict.pt", records);
    if (Status st = safetensors.get(); st)
      files.push_back("state_dict.safetensors");
    else
      diag.warn(dir + "/state_dict.safetensors not written: " + st.error().to_string());
    MLFX_TRY(std::move(pt));
    files.push_back("state_dict.pt");
    // Not part of state_dict(), but the model's forward may read them: a rehost needs them.
    if (!non_persistent.empty()) {
      MLFX_TRY(exporters::write_safetensors(dir + "/non_persistent.safetensors", non_persistent, meta));
      files.push_back("non_persistent.safetensors");
    }
    json::Json arch = walker.architecture(roots[n]);
    arch["tensors"] = tensor_meta;
    MLFX_TRY(write_new_file(dir + "/architecture.json", arch.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n", 0640));
    files.push_back("architecture.json");
    model["directory"] = "models/" + dir_name(n, m->class_name);
    model["tensors"] = records.size();
    model["parameters"] = parameters;
    model["storage_bytes"] = bytes;
    model["complete"] = missing.empty();
    model["missing"] = missing;
    model["files"] = files;
    models.push_back(std::move(model));
  }
  std::set<uint64_t> model_tensors;
  for (uint64_t root : roots)
    for (const auto& entry : walker.state_dict(root, true)) model_tensors.insert(entry.tensor);
  json::Json loose = json::Json::object();
  if (torch_version) {
    MLFX_ASSIGN(loose, export_loose_tensors(tracked, objects, tensors, storage, model_tensors, o.out_dir));
  }
  timings["export_ms"] = ms_since(t3);
  timings["total_ms"] = ms_since(t0);
  if (sysroot) ev.description["sysroot"] = sysroot_report(*sysroot, diag);

  json::Json report = {
      {"tool", {{"name", kToolName}, {"version", kToolVersion}}},
      {"created_utc", utc_timestamp()},
      {"input", ev.description},
      {"process",
       {{"pid", info.pid}, {"command", info.command}, {"args", info.args},
        {"threads", info.threads.size()}, {"mapped_files", info.files.size()},
        {"segments", info.loads.size()}}},
      {"python",
       {{"version", runtime.version()}, {"binary", runtime.binary()}, {"layout", runtime.layout().name},
        {"runtime", hex_address(runtime.runtime())}, {"gc_state", hex_address(runtime.gc_state())},
        {"gc_objects", tracked.size()}}},
      {"torch", {{"version", torch_version ? json::Json(*torch_version) : json::Json(nullptr)},
                 {"loaded", torch_version.has_value()},
                 {"layout", tensors.layout() ? tensors.layout()->name : "none (no tensors read)"},
                 {"modules", walker.modules().size()}}},
      {"models", models},
      {"loose_tensors", loose},
      {"diagnostics", {{"warnings", diag.warnings()}, {"dropped", diag.dropped()}}},
      {"timings", timings}};
  MLFX_TRY(write_new_file(o.out_dir + "/report.json", report.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n", 0640));
  return report;
}

}  // namespace mlfx::recovery
