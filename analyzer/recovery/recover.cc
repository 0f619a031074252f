#include "recovery/recover.h"

#include <sys/stat.h>

#include <chrono>
#include <cstring>
#include <cstdio>
#include <deque>
#include <future>
#include <memory>

#include "evidence/bundle_check.h"
#include "exporters/safetensors_writer.h"
#include "exporters/torch_pt_writer.h"
#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "frontends/torch/module_walker.h"
#include "frontends/torch/tensor_reader.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
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

Status make_output_dir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0750) == 0) return {};
  if (errno != EEXIST) return fail(Errc::kIo, "cannot create " + dir + ": " + errno_text(errno));
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(Errc::kExists, dir + " exists and is not a directory");
  std::string probe = dir + "/report.json";
  if (access(probe.c_str(), F_OK) == 0 || access((dir + "/models").c_str(), F_OK) == 0)
    return fail(Errc::kExists, "output directory " + dir + " already holds a recovery; choose a new one");
  return {};
}

// The evidence behind the process image, kept alive while layers point into it.
struct Evidence {
  std::optional<evidence::DecryptedStream> decrypted;
  std::shared_ptr<layers::FileLayer> file;
  json::Json description;
};

Result<Evidence> open_evidence(const RecoverOptions& o) {
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

}  // namespace

Result<json::Json> recover(const RecoverOptions& o) {
  auto t0 = Clock::now();
  json::Json timings = json::Json::object();
  Diagnostics diag;
  MLFX_ASSIGN(Evidence ev, open_evidence(o));
  auto core = layers::ElfCoreLayer::open(ev.file);
  if (!core) return fail(std::move(core).error().context(o.input));
  const layers::CoreInfo& info = (*core)->info();
  for (const auto& w : info.warnings) diag.warn(w);
  timings["open_ms"] = ms_since(t0);

  auto t1 = Clock::now();
  MLFX_ASSIGN(auto runtime, frontends::cpython::PythonRuntime::locate(**core, info.files, diag));
  frontends::cpython::ObjectReader objects(**core, runtime.layout());
  std::vector<uint64_t> tracked = runtime.tracked_objects(diag);
  timings["gc_walk_ms"] = ms_since(t1);

  const std::optional<std::string> torch_version = runtime.module_string(objects, "torch.version", "__version__");
  auto t2 = Clock::now();
  frontends::torch::ModuleWalker walker(objects, diag);
  walker.scan(tracked);
  std::vector<uint64_t> roots = walker.roots();
  timings["module_scan_ms"] = ms_since(t2);

  MLFX_TRY(make_output_dir(o.out_dir));
  const std::string models_dir = o.out_dir + "/models";
  if (!roots.empty() && mkdir(models_dir.c_str(), 0750) != 0)
    return fail(Errc::kIo, "cannot create " + models_dir + ": " + errno_text(errno));

  auto t3 = Clock::now();
  frontends::torch::TensorReader tensors(objects);
  StorageBytes storage(**core);
  json::Json models = json::Json::array();
  for (size_t n = 0; n < roots.size(); ++n) {
    const auto* m = walker.module(roots[n]);
    json::Json model = {{"index", n}, {"class", m->class_name}, {"address", hex_address(roots[n])}};
    std::vector<exporters::TensorRecord> records;
    json::Json missing = json::Json::array(), tensor_meta = json::Json::object();
    uint64_t bytes = 0, parameters = 0;
    for (const auto& entry : walker.state_dict(roots[n])) {
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
      bytes += t->storage_bytes;
      if (!entry.is_buffer) parameters += static_cast<uint64_t>(t->numel);
      tensor_meta[entry.key] = {{"python_class", t->python_class}, {"address", hex_address(t->object)},
                                {"storage", hex_address(t->storage)}, {"data", hex_address(t->data)},
                                {"buffer", entry.is_buffer}};
      records.push_back(std::move(r));
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
  timings["export_ms"] = ms_since(t3);
  timings["total_ms"] = ms_since(t0);

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
      {"diagnostics", {{"warnings", diag.warnings()}, {"dropped", diag.dropped()}}},
      {"timings", timings}};
  MLFX_TRY(write_new_file(o.out_dir + "/report.json", report.dump(1, ' ', false, json::Json::error_handler_t::replace) + "\n", 0640));
  return report;
}

}  // namespace mlfx::recovery
