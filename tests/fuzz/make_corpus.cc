// Writes the seed corpora of the fuzz targets:
//
//   make_corpus [--bundle_reader DIR] [--manifest DIR] [--custody DIR] [--keys DIR]
//               [--elf_core DIR] [--python_objects DIR] [--wire DIR] [--safetensors DIR]
//               [--physical DIR] [--btf DIR] [--kernel DIR] [--capture_request DIR] [--cuda_core DIR]
//
// bundle_reader: small valid bundles (chunk size 4 KiB) sealed with BundleWriter, signed by
//                the fixed device key and encrypted to the fixed lab key of fixed_keys.h;
// manifest:      the manifests of those bundles (canonical JSON, as in their MNFT records);
// custody:       their custody logs, plus longer signed logs for the fixed bundle id;
// keys:          the fixed key files and a few combinations of them;
// elf_core:      small synthetic ELF cores (< 64 KiB) of a "Python process": PT_LOADs, a
//                PT_NOTE with NT_PRSTATUS/NT_PRPSINFO/NT_AUXV/NT_FILE, a mapped libpython with
//                a dynamic symbol table (SysV or GNU hash), _PyRuntime, an interpreter whose
//                GC lists hold a torch-like model (synthetic_image.h); and every hostile
//                shape of hostile_shapes.h at seed size (aliased keys, long names, shared
//                huge dicts, zero-stride and overlapping tensors, cycles, deep chains...);
// python_objects: a 64-byte header of object addresses and flags, then a blob of CPython 3.11
//                objects at 0x10000 (types, str, int, tuple, list, set, dicts, the model),
//                and the hostile shapes' objects;
// wire:          one intake protocol frame (header and body) of each message type;
// physical:      whole-memory captures as physical_fuzz reads them (LiME image, pagemap stream,
//                context JSON): scattered and contiguous frames, swapped, untouched and
//                out-of-image pages, a page sample, a capture without pagemap; each opened and
//                its process rebuilt before it is kept;
// btf:           the reduced BTF of synthetic_kernel.h (6.x with the maple tree, 5.x with the
//                VMA list) and the synthetic kernels' kallsyms texts (the target parses both);
// kernel:        synthetic kernels (synthetic_kernel.h) as kernel_fuzz reads them (LiME image,
//                kallsyms, BTF, banner): 4- and 5-level paging, maple tree or VMA list; each
//                opened, its tasks, VMAs and process rebuilt and checked before it is kept;
// safetensors:   files as safetensors_writer.h writes them (none, one, many dtypes, 0-d and
//                empty tensors, metadata), each read back before it is kept;
// cuda_core:     CUDA GPU core dumps per NVIDIA's public cudacoredump.h (synthetic_cuda_core.h):
//                device rows of 72, 80 and 88 bytes, with and without metadata, extended
//                numbering, managed memory, gzip in one and in two members, a CUPTI copy-out with
//                an .mlfx.unreadable table; each opened first;
// capture_request: signed capture requests from the lab (by target, by pid, every field at its
//                longest, non-ASCII text), signed by the fixed device key, each parsed back.
//
// Every bundle is read back and fully verified and decrypted before it is kept, so a seed
// corpus never silently degrades into inputs that are rejected at the first byte. Bundle ids
// and data keys are random, so the bytes differ from run to run; the structure does not.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "mlfx/base/file.h"
#include "mlfx/bundle/reader.h"
#include "mlfx/bundle/writer.h"
#include "mlfx/custody/custody_log.h"
#include "mlfx/request/capture_request.h"
#include "mlfx/wire/messages.h"
#include "exporters/safetensors_reader.h"
#include "safetensors_bytes.h"
#include "frontends/cpython/layout.h"
#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "frontends/torch/module_walker.h"
#include "frontends/torch/tensor_reader.h"
#include "layers/file_layer.h"
#include "mlfx/crypto/hash.h"
#include "physical/physical_image.h"
#include "layers/cuda_core_layer.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "hostile_shapes.h"
#include "synthetic_cuda_core.h"
#include "kernel/tasks.h"
#include "synthetic_image.h"
#include "synthetic_kernel.h"

namespace {

using namespace mlfx;
namespace fs = std::filesystem;

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "make_corpus: %s\n", msg.c_str());
  std::exit(1);
}

template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r) die(what + ": " + r.error().to_string());
  return std::move(*r);
}
void must(Status s, const std::string& what) {
  if (!s) die(what + ": " + s.error().to_string());
}

void write_file(const fs::path& dir, const std::string& name, std::string_view data) {
  const fs::path p = dir / name;
  std::error_code ec;
  fs::remove(p, ec);
  must(write_new_file(p.string(), data, 0644), "writing " + p.string());
}

// Deterministic filler: text-like for some streams, binary for others.
Bytes filler(size_t n, uint64_t seed, bool text) {
  Bytes b(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b[i] = text ? static_cast<uint8_t>("abcdefghij klmnop\n0123456789"[x % 29]) : uint8_t(x);
  }
  return b;
}

struct StreamSpec {
  std::string name, source;
  size_t size;
  bool text;
};

struct BundleSpec {
  std::string file;  // base name, without extension
  std::vector<StreamSpec> streams;
  bool legacy_hashes = false;
  json::Json context = json::Json::object();
};

struct Sealed {
  std::string bundle, manifest, custody;
};

Sealed seal(const BundleSpec& spec, const fs::path& tmpdir) {
  const crypto::SigningKey& device = *fuzz::fixed_device_key().signing;
  const crypto::BoxPublicKey& lab = fuzz::fixed_lab_key().box->public_key();
  const fs::path path = tmpdir / (spec.file + ".mlfx");
  std::error_code ec;
  fs::remove(path, ec);

  bundle::SealParams params;
  params.chunk_size = bundle::kMinChunkSize;
  params.case_id = "FUZZ-0001";
  params.note = "seed bundle " + spec.file;
  params.device_id = "fuzz-device";
  params.command = "make_corpus";
  params.tool_parameters = {{"chunk_size", params.chunk_size}, {"seed", spec.file}};
  params.legacy_hashes = spec.legacy_hashes;
  params.context = spec.context;
  File out = must(File::create_new(path.string(), 0600), "creating " + path.string());
  auto writer = must(bundle::BundleWriter::create(std::move(out), device, {lab}, params),
                     "BundleWriter::create");
  for (size_t i = 0; i < spec.streams.size(); ++i) {
    const StreamSpec& s = spec.streams[i];
    must(writer.begin_stream(s.name, s.source), "begin_stream " + s.name);
    const Bytes data = filler(s.size, i + 1, s.text);
    // Uneven writes, so that chunk boundaries do not line up with write calls.
    for (size_t off = 0; off < data.size();) {
      const size_t n = std::min<size_t>(data.size() - off, 1000 + 37 * off % 3000);
      must(writer.write({data.data() + off, n}), "write " + s.name);
      off += n;
    }
    must(writer.end_stream(), "end_stream " + s.name);
  }
  must(writer.finish({{"method", "make_corpus"}, {"seed", spec.file}}), "finish");

  // Read it back the way bundle_reader_fuzz does; every check must pass.
  auto r = must(bundle::BundleReader::open(path.string()), "reopening " + path.string());
  must(r.verify_signature(), "verify_signature");
  must(r.verify_chunks(nullptr), "verify_chunks");
  must(r.verify_custody(), "verify_custody");
  auto key = must(r.unwrap_data_key(*fuzz::fixed_lab_key().box), "unwrap_data_key");
  for (size_t i = 0; i < r.layout().size(); ++i)
    must(r.decrypt_stream(i, key.view(), [](ByteView) -> Status { return {}; }, nullptr),
         "decrypt_stream");

  Sealed s;
  s.bundle = must(read_small_file(path.string(), 16u << 20), "reading " + path.string());
  s.manifest = r.manifest_bytes();
  s.custody = r.custody().serialize();
  fs::remove(path, ec);
  return s;
}

// Custody logs for the fixed bundle id, signed by the fixed device and lab keys.
std::map<std::string, std::string> custody_logs() {
  const crypto::SigningKey& device = *fuzz::fixed_device_key().signing;
  const crypto::SigningKey& lab = *fuzz::fixed_lab_key().signing;
  const custody::Actor dev{"device", "fuzz-device", "capture-host", "root"};
  const custody::Actor intake{"intake", "evidence-desk", "intake-host", "clerk"};
  const custody::Actor analyst{"lab", "analyst", "lab-host", "analyst"};
  const std::string id = fuzz::kFixedBundleIdHex;

  std::map<std::string, std::string> out;
  custody::CustodyLog log(id);
  auto add = [&](const char* type, const custody::Actor& a, const crypto::SigningKey& k,
                 json::Json params, json::Json details) {
    must(log.append(type, a, k, std::move(params), std::move(details)), std::string("append ") + type);
  };
  add("acquired", dev, device, {{"pid", 4242}, {"regions", json::Json::array({"heap", "stack"})}},
      {{"streams", json::Json::array({{{"name", "cpu"}, {"size", 4096}}})}});
  add("sealed", dev, device, json::Json::object(),
      {{"manifest_sha256", std::string(64, 'a')}, {"recipients", json::Json::array()}});
  out["custody-2-events.jsonl"] = log.serialize();
  add("shipped", dev, device, {{"carrier", "courier"}}, {{"tracking", "XY-123"}});
  add("received", intake, lab, json::Json::object(), {{"seal_intact", true}, {"note", "\xc3\xa9 \xe2\x9c\x93 \x01"}});
  add("verified", analyst, lab, json::Json::object(), {{"result", "ok"}, {"events", 4}});
  add("opened", analyst, lab, {{"streams", json::Json::array({"cpu"})}}, json::Json::object());
  add("analyzed", analyst, lab, {{"tool", "mlfx"}, {"depth", 3.5}, {"flag", nullptr}},
      {{"findings", json::Json::array({1, -2, "three"})}});
  out["custody-7-events.jsonl"] = log.serialize();
  out["custody-1-event.jsonl"] = log.serialize().substr(0, log.serialize().find('\n') + 1);
  return out;
}


// ---- process images (elf_core, python_objects) ----------------------------------------------

using fuzz::Blob;
using fuzz::PyHeap;

struct CoreSpec {
  std::string file;
  bool gnu_hash = false;   // else DT_HASH
  bool with_model = true;  // a torch-like model in the GC lists
  bool thread_notes = true;
};

std::vector<CoreSpec> core_specs() {
  return {{"python-sysv.core", false, true, true},
          {"python-gnu.core", true, true, true},
          {"python-no-model.core", false, false, false}};
}

std::string elf_core(const CoreSpec& spec) {
  fuzz::PythonProcess proc(spec.gnu_hash);
  PyHeap& py = proc.py();
  std::vector<uint64_t> tracked;
  if (spec.with_model) {
    tracked = fuzz::make_torch_model(py).all_objects;
    proc.import_torch();
  } else {
    uint64_t foo = py.heap_type("__main__", "Foo", PyHeap::kManagedDict, {});
    tracked = {py.managed_instance(foo, 16), py.managed_instance(foo, 16)};
    proc.blob().put64(tracked[0] - 24, py.dict({{py.str("x"), py.tuple({py.str("a"), py.integer(1)})}}));
  }
  proc.track(tracked);
  return proc.core(spec.thread_notes);
}

// Reads a seed core back the way elf_core_fuzz does; it must get as deep as intended.
void check_core(const std::string& path, const CoreSpec& spec) {
  std::shared_ptr<const layers::Layer> f = must(layers::FileLayer::open(path), "opening " + path);
  auto core = must(layers::ElfCoreLayer::open(f), "ElfCoreLayer::open " + path);
  const auto& info = core->info();
  if (info.files.size() != 3 || info.loads.size() != 3 || (spec.thread_notes && (info.threads.size() != 1 || info.pid != 4242)))
    die(path + ": the notes did not parse as built");
  Diagnostics diag;
  auto rt = must(frontends::cpython::PythonRuntime::locate(*core, info.files, diag), "locate " + path);
  auto objects = rt.tracked_objects(diag);
  if (!diag.warnings().empty()) die(path + ": " + diag.warnings().front());
  frontends::cpython::ObjectReader reader(*core, rt.layout(), diag);
  frontends::torch::ModuleWalker walker(reader, diag);
  walker.scan(objects);
  if (!spec.with_model) return;
  auto roots = walker.roots();
  if (walker.modules().size() != 2 || roots.size() != 1) die(path + ": the model's modules were not found");
  auto entries = walker.state_dict(roots[0]).entries;
  if (entries.size() != 4) die(path + ": state_dict has " + std::to_string(entries.size()) + " entries, not 4");
  frontends::torch::TensorReader tensors(reader);
  for (const auto& e : entries) must(tensors.read(e.tensor), "reading tensor " + e.key);
  if (rt.module_string(reader, "torch.version", "__version__") != "1.13.1") die(path + ": no torch version");
}

// The hostile shapes (hostile_shapes.h) at seed size: each still parses to a Python process.
constexpr uint64_t kHostileSeedBytes = 16 * 1024;

void check_hostile_core(const std::string& path) {
  std::shared_ptr<const layers::Layer> f = must(layers::FileLayer::open(path), "opening " + path);
  auto core = must(layers::ElfCoreLayer::open(f), "ElfCoreLayer::open " + path);
  Diagnostics diag;
  auto rt = must(frontends::cpython::PythonRuntime::locate(*core, core->info().files, diag), "locate " + path);
  if (rt.tracked_objects(diag).empty()) die(path + ": no tracked objects");
}

// python_objects seeds of the hostile shapes.
std::map<std::string, std::string> hostile_object_seeds() {
  std::map<std::string, std::string> out;
  for (const fuzz::HostileShape& shape : fuzz::hostile_shapes())
    out["hostile-" + shape.name + ".bin"] = fuzz::hostile_objects_input(shape, kHostileSeedBytes);
  return out;
}

// python_objects: header (7 addresses + flags), then the blob at 0x10000.
std::map<std::string, std::string> python_object_seeds() {
  Blob b(0x10000);
  PyHeap py(b);
  fuzz::TorchModel m = fuzz::make_torch_model(py);
  const uint64_t s = py.str("hello"), u = py.ustr(u"\u00fcber\u20ac"), i = py.integer(-123456789),
                 big = py.big_integer(4), f = py.real(-1.5), t = py.tuple({s, i, py.none}),
                 l = py.list({f, t}), st = py.set({s, u}),
                 d = py.dict({{s, i}, {u, f}}), gd = py.dict({{i, s}, {f, u}}, 0),
                 sd = py.split_dict({{py.str("x"), i}, {py.str("y"), s}}),
                 od = py.ordered_dict({{s, i}, {py.str("k2"), l}});
  b.bytes.resize((b.bytes.size() + 15) / 16 * 16);
  const std::string blob(b.bytes.begin(), b.bytes.end());

  // Sanity: the blob reads back as built.
  {
    auto base = std::make_shared<fuzz::MemoryLayer>(b.bytes);
    auto mem = must(layers::SegmentedLayer::create("seed", base, {{b.base, b.bytes.size(), 0}}), "segments");
    Diagnostics diag;
    frontends::cpython::ObjectReader r(*mem, *frontends::cpython::layout_for(0x030B0200), diag);
    if (must(r.str(s), "str") != "hello" || must(r.integer(i), "int") != -123456789 ||
        must(r.tuple_items(t), "tuple").size() != 3 || must(r.str_dict(d), "dict").size() != 2 ||
        must(r.dict_items(gd), "general dict").size() != 2 || must(r.str_dict(sd), "split dict").front().first != "y" ||
        must(r.dict_items(od), "OrderedDict").front().first == s || must(r.set_items(st), "set").size() != 2 ||
        must(r.real(f), "float") != -1.5 ||
        !must(r.plain_value(t), "plain").has_value())
      die("python_objects seed: objects do not read back as built");
    frontends::torch::ModuleWalker w(r, diag);
    w.scan({m.root, m.child});
    if (w.roots().size() != 1 || w.state_dict(m.root).entries.size() != 4) die("python_objects seed: no model");
  }

  auto seed = [&](std::vector<uint64_t> addrs, uint64_t flags) {
    addrs.resize(7, 0);
    std::string h(64, '\0');
    std::memcpy(&h[0], addrs.data(), 56);
    std::memcpy(&h[56], &flags, 8);
    return h + blob;
  };
  std::map<std::string, std::string> out;
  out["model.bin"] = seed({m.root, m.child, m.tensors[0], s, d, t, py.type_type}, 0);
  out["model-split.bin"] = seed({m.root, m.child, od, sd, st, l, i}, 1 | (uint64_t(blob.size() / 2 + 3) << 8));
  out["scalars.bin"] = seed({s, u, i, big, f, l, py.str_type}, 0);
  out["dicts.bin"] = seed({d, gd, sd, od, st, t, m.root}, 1 | (uint64_t(4096) << 8));
  return out;
}

// Signed capture requests, as the intake hands them to a device.
std::map<std::string, std::string> capture_request_seeds() {
  const crypto::SigningKey& key = *fuzz::fixed_device_key().signing;
  constexpr int64_t kIssued = 1'800'000'000;
  struct Spec {
    const char* file;
    std::string target;
    uint32_t pid;
    std::string reason, requester;
  };
  const std::vector<Spec> specs = {
      {"by-target.json", "resnet", 0, "incident 42: odd outputs", "alice@lab"},
      {"by-pid.json", "", 4242, "triage", "bob"},
      {"longest.json", std::string(64, 't'), 0, std::string(1024, 'r'), std::string(128, 'q')},
      {"unicode.json", "model.v2_a-b", 0, "Anomalie: Ausgabe \u00fcberpr\u00fcfen \\ \"quoted\"", "\u00e9quipe"},
  };
  std::map<std::string, std::string> seeds;
  for (const Spec& spec : specs) {
    auto r = request::make_capture_request("car-17", spec.target, spec.pid, spec.reason, spec.requester, kIssued,
                                           std::chrono::seconds(300));
    if (!r) die(std::string("capture request seed ") + spec.file + ": " + r.error().to_string());
    auto s = request::sign(*r, key);
    if (!s) die(std::string("capture request seed ") + spec.file + ": " + s.error().to_string());
    if (auto back = request::parse_signed_request(s->text()); !back || back->text() != s->text())
      die(std::string("capture request seed ") + spec.file + " does not parse back");
    seeds[spec.file] = s->text();
  }
  return seeds;
}

// One frame of each wire message (header and body), as a peer sends them.
std::map<std::string, std::string> wire_frames() {
  auto frame = [](wire::FrameType t, const json::Json& body) {
    Bytes f = wire::encode_json_frame(t, body);
    return std::string(f.begin(), f.end());
  };
  wire::Receipt r{std::string(32, 'a'), std::string(64, 'b'), "sha256:dev", "objects/b.mlfx",
                  "2026-11-22T02:00:00Z", std::string(64, 'c'), "sha256:intake", 917987328};
  wire::SignedReceipt sr{r, Bytes(64, 7)};
  std::map<std::string, std::string> out;
  wire::Hello hello;
  hello.agent = "mlfx-agent 0.3.0";
  out["hello.frame"] = frame(wire::FrameType::kHello, wire::to_json(hello));
  out["welcome.frame"] = frame(wire::FrameType::kWelcome,
                               wire::to_json(wire::Welcome{1, "car-17", "sha256:aa", "sha256:bb", (4u << 20) + 56, 1ull << 40}));
  out["offer.frame"] = frame(wire::FrameType::kOffer,
                             wire::to_json(wire::Offer{std::string(32, 'a'), 917987328, std::string(64, 'b'), 4u << 20}));
  out["status-partial.frame"] = frame(
      wire::FrameType::kStatus, wire::to_json(wire::UploadStatus{wire::UploadState::kPartial, {{0, 64}, {4096, 4194352}}, {}}));
  out["status-stored.frame"] =
      frame(wire::FrameType::kStatus, wire::to_json(wire::UploadStatus{wire::UploadState::kStored, {{0, 917987328}}, sr}));
  out["receipt.frame"] = frame(wire::FrameType::kReceipt, wire::to_json(sr));
  out["error.frame"] = frame(wire::FrameType::kError, wire::to_json(wire::ErrorMessage{wire::WireError::kBadRecord, "x"}));
  out["request-poll.frame"] = frame(wire::FrameType::kRequestPoll,
                                    wire::to_json(wire::RequestPoll{8, {{std::string(32, 'a'), true, ""},
                                                                        {std::string(32, 'b'), false, "expired"}}}));
  const std::string request = capture_request_seeds().at("by-target.json");
  out["requests.frame"] = frame(wire::FrameType::kRequests,
                                wire::to_json(wire::RequestBatch{{*json::parse(request, "seed")}, true}));
  Bytes rec = wire::encode_frame(wire::FrameType::kRecord, wire::encode_record_body(64, as_bytes(std::string(48, 'r'))));
  out["record.frame"] = std::string(rec.begin(), rec.end());
  return out;
}

}  // namespace

// Safetensors files of a few tensors each (contiguous, their own storages), as the exporter
// writes them; each must read back.
std::map<std::string, std::string> safetensors_seeds() {
  using exporters::TensorRecord;
  static const std::string bytes = [] {
    std::string b(256, 0);
    for (size_t i = 0; i < b.size(); ++i) b[i] = char(i * 37 + 11);
    return b;
  }();
  auto tensor = [](std::string key, int dtype, std::vector<int64_t> shape) {
    uint64_t n = exporters::find_dtype(dtype)->item_size;
    for (int64_t d : shape) n *= uint64_t(d);
    auto t = fuzz::contiguous_tensor(key, dtype, std::move(shape), as_bytes(bytes).first(n), key.size());
    if (!t) die("safetensors seed tensor " + key);
    return *t;
  };
  const std::map<std::string, std::pair<std::vector<TensorRecord>, exporters::SafetensorsMetadata>> files = {
      {"empty.safetensors", {{}, {}}},
      {"linear.safetensors",
       {{tensor("weight", exporters::kFloat, {4, 3}), tensor("bias", exporters::kFloat, {4})}, {{"format", "pt"}}}},
      {"dtypes.safetensors",
       {{tensor("f64", exporters::kDouble, {2, 2}), tensor("f16", exporters::kHalf, {3}),
         tensor("bf16", exporters::kBFloat16, {1, 2, 2}), tensor("i64", exporters::kLong, {2}),
         tensor("i8", exporters::kChar, {5}), tensor("u8", exporters::kByte, {2, 3}),
         tensor("bool", exporters::kBool, {7}), tensor("scalar", exporters::kInt, {}),
         tensor("empty", exporters::kFloat, {0, 5})},
        {{"mlfx", "seed"}, {"notes", "{\"nested\": \"json in a string\"}"}}}},
      {"reference.safetensors",
       {{tensor("input", exporters::kFloat, {2, 1, 4, 4}), tensor("output", exporters::kFloat, {2, 10})}, {}}},
  };
  std::map<std::string, std::string> out;
  for (const auto& [name, spec] : files) {
    const std::vector<uint8_t> file = must(fuzz::safetensors_bytes(spec.first, spec.second), name);
    auto back = exporters::SafetensorsFile::parse(file, name);
    if (!back || back->tensors().size() != spec.first.size()) die("safetensors seed " + name + " does not read back");
    out[name] = std::string(file.begin(), file.end());
  }
  return out;
}

// ---- whole-memory captures (physical) ------------------------------------------------------

void put_le(std::string& s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// physical_fuzz's input: u32-length-prefixed LiME image, pagemap and moved streams, then the context.
std::string physical_input(const std::string& lime, const std::string& pagemap, const std::string& context,
                           const std::string& moved = "") {
  std::string s;
  for (const std::string* part : {&lime, &pagemap, &moved}) {
    put_le(s, part->size(), 4);
    s += *part;
  }
  return s + context;
}

std::map<std::string, std::string> physical_seeds() {
  constexpr uint64_t kPage = 4096, kPresent = 1ull << 63, kSwapped = 1ull << 62;
  const std::string banner = "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP";
  auto range = [](uint64_t start, const std::string& bytes) {
    std::string h;
    put_le(h, 0x4C694D45, 4), put_le(h, 1, 4), put_le(h, start, 8), put_le(h, start + bytes.size() - 1, 8), put_le(h, 0, 8);
    return h + bytes;
  };
  std::string frames;  // frames 0x10..0x13: pages of 'A'..'D'
  for (char c : {'A', 'B', 'C', 'D'}) frames += std::string(kPage, c);
  std::string banner_page = banner + std::string(kPage - banner.size(), '\0');
  const std::string lime = range(0x10 * kPage, frames) + range(0x20 * kPage, banner_page);
  auto pagemap = [](const std::vector<std::pair<uint64_t, std::vector<uint64_t>>>& records) {
    std::string s = "MLFXPMAP";
    put_le(s, 1, 4), put_le(s, records.size(), 4);
    for (const auto& [start, entries] : records) {
      put_le(s, 4242, 4), put_le(s, 0, 4), put_le(s, start, 8), put_le(s, entries.size(), 8);
      for (uint64_t e : entries) put_le(s, e, 8);
    }
    return s;
  };
  json::Json context = {
      {"source", "kmod"},
      {"kernel", {{"banner", banner + "\n"}, {"release", "6.1.0-57-amd64"}, {"machine", "x86_64"}, {"page_size", kPage}}},
      {"processes",
       {{{"pid", 4242}, {"comm", "python3"}, {"cmdline", "python3 victim.py"}, {"threads", 2},
         {"maps", {{{"start", 0x400000}, {"end", 0x404000}, {"perms", "rw-p"}, {"offset", 0}, {"inode", 0}, {"path", ""}},
                   {{"start", 0x7f0000000000}, {"end", 0x7f0000002000}, {"perms", "r-xp"}, {"offset", 0x1000},
                    {"inode", 12}, {"path", "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"}}}},
         {"page_sample", {{{"vaddr", 0x400000}, {"sha256", crypto::sha256_hex(as_bytes(std::string(kPage, 'B')))}}}}}}},
      {"unreadable", {{{"start", 0x14000}, {"end", 0x14fff}, {"reason", "EHWPOISON"}}}}};
  std::map<std::string, std::string> seeds;
  seeds["scattered.phys"] = physical_input(
      lime, pagemap({{0x400000, {kPresent | 0x11, kPresent | 0x12, kPresent | 0x10, kSwapped | (3 << 5)}},
                     {0x7f0000000000, {kPresent | 0x13, 0}}}),
      context.dump());
  seeds["holes.phys"] = physical_input(
      lime, pagemap({{0x400000, {kPresent | 0x11, kPresent | 0x99, kPresent, 0}}}), context.dump());
  {  // a page that moved during the capture: zeroed in the pagemap, its bytes in the moved stream
    std::string moved = "MLFXMOVD";
    put_le(moved, 1, 4), put_le(moved, 1, 4), put_le(moved, 4242, 4), put_le(moved, 0, 4), put_le(moved, 0x401000, 8);
    moved += std::string(kPage, 'M');
    json::Json c = context;
    c["processes"][0]["pages_moved"] = 1;
    seeds["moved.phys"] = physical_input(lime, pagemap({{0x400000, {kPresent | 0x11, 0, kPresent | 0x10}}}), c.dump(), moved);
  }
  json::Json no_pid = context;
  no_pid["processes"] = json::Json::array();
  seeds["no-pagemap.phys"] = physical_input(lime, "", no_pid.dump());
  // Each seed must open and rebuild its process (or, without pagemap, open), as intended.
  for (const auto& seed : seeds) {
    const std::string &name = seed.first, &input = seed.second;  // (clang 14 cannot capture bindings)
    const uint8_t* d = reinterpret_cast<const uint8_t*>(input.data());
    const size_t n = load_le<uint32_t>(d), m = load_le<uint32_t>(d + 4 + n), k = load_le<uint32_t>(d + 8 + n + m);
    auto layer = [&](size_t at, size_t len) -> std::shared_ptr<const layers::Layer> {
      if (len == 0) return nullptr;
      auto f = File::create_memory("seed");
      if (!f || !f->pwrite_all(0, ByteView(d + at, len))) die("physical seed " + name + ": memfd");
      auto l = layers::FileLayer::open(f->path());
      if (!l) die("physical seed " + name + ": " + l.error().to_string());
      return std::shared_ptr<const layers::Layer>(std::move(*l));
    };
    auto img = physical::PhysicalImage::open(layer(4, n), input.substr(12 + n + m + k), layer(8 + n, m),
                                             layer(12 + n + m, k));
    if (!img) die("physical seed " + name + " does not open: " + img.error().to_string());
    if (!img->check_banner()) die("physical seed " + name + ": banner not found");
    if (m && !img->process(4242)) die("physical seed " + name + ": process not rebuilt");
    if (k && img->process(4242)->pages_moved_supplied != 1) die("physical seed " + name + ": moved page not used");
  }
  return seeds;
}

// ---- kernel structures (btf, kernel) --------------------------------------------------------

struct KernelVariant {
  std::string name;
  int levels;
  bool maple_tree;
};
const std::vector<KernelVariant> kKernelVariants = {
    {"maple-4level", 4, true}, {"maple-5level", 5, true}, {"list-4level", 4, false}};

// Each synthetic kernel must be found and walked as the scene intends: the four tasks, the
// python3 process's four VMAs with their names, its pages and its command line.
void check_kernel_seed(const std::string& name, const fuzz::KernelSeed& seed) {
  auto fail = [&](const std::string& why) { die("kernel seed " + name + ": " + why); };
  auto file = std::make_shared<fuzz::MemoryLayer>(std::vector<uint8_t>(seed.lime.begin(), seed.lime.end()));
  auto image = must(layers::LimeLayer::open(file), "kernel seed " + name + ": LiME image");
  auto k = must(kernel::KernelImage::open(std::shared_ptr<const layers::SegmentedLayer>(std::move(image)), seed.kallsyms,
                                          seed.btf, seed.banner),
                "kernel seed " + name + " does not open");
  Diagnostics diag;
  const std::vector<kernel::Task> tasks = k->tasks(diag);
  if (tasks.size() != 4 || tasks[0].comm != "swapper/0" || tasks[3].pid != fuzz::kSeedPid || tasks[3].comm != "python3" ||
      tasks[3].uid != 1000 || tasks[3].threads != 3 || tasks[3].ppid != 0)
    fail("the task list is not init, systemd, kthreadd, python3");
  const std::vector<kernel::Vma> vmas = k->vmas(tasks[3], diag);
  if (vmas.size() != 4 || vmas[0].path != "/usr/bin/python3" || vmas[1].path != "[heap]" || !vmas[2].path.empty() ||
      vmas[3].path != "[stack]")
    fail("python3's VMAs are not text, heap, anonymous and stack");
  auto p = must(k->process_image(tasks[3], diag), "kernel seed " + name + ": process");
  if (p.facts.args != "python3 victim.py" || p.facts.image_bytes != 6 * kernel::kPageSize || p.warnings.size() != 2)
    fail("python3's pages or command line are not as built");
  const auto* space = dynamic_cast<const kernel::PageTableLayer*>(p.memory.get());
  const kernel::PageCounts huge = kernel::KernelImage::count_pages(*space, vmas[2].start, vmas[2].end, diag);
  if (huge.in_image != 2 || huge.not_in_image != 510) fail("the 2 MiB page is not two 4 KiB frames in the image");
  if (!diag.warnings().empty()) fail("warnings: " + diag.warnings().front());
  std::string elf(4, '\0');
  if (!p.memory->read(0x400000, elf.data(), 4) || elf != "\x7f" "ELF") fail("the text page does not read back");
}

std::map<std::string, std::string> kernel_seeds() {
  std::map<std::string, std::string> seeds;
  for (const KernelVariant& v : kKernelVariants) {
    const fuzz::KernelSeed seed = fuzz::SyntheticKernel(v.levels, v.maple_tree).seed();
    check_kernel_seed(v.name, seed);
    const std::string input = fuzz::kernel_input(seed);
    if (input.size() >= 256 * 1024) die("kernel seed " + v.name + " is too large");
    seeds[v.name + ".kern"] = input;
  }
  return seeds;
}

std::map<std::string, std::string> btf_seeds() {
  std::map<std::string, std::string> seeds;
  for (const KernelVariant& v : kKernelVariants) {
    const fuzz::KernelSeed seed = fuzz::SyntheticKernel(v.levels, v.maple_tree).seed();
    const std::string kallsyms = "kallsyms-" + std::to_string(v.levels) + "level.txt";
    must(kernel::Kallsyms::parse(seed.kallsyms), "btf seed " + kallsyms);
    seeds[kallsyms] = seed.kallsyms;  // the same for both 4-level kernels
    if (v.levels == 4) {
      auto btf = must(kernel::Btf::parse(seed.btf), "btf seed " + v.name);
      must(btf.offset_of("task_struct", "comm"), "btf seed " + v.name);
      seeds[(v.maple_tree ? "vmlinux-maple" : "vmlinux-list") + std::string(".btf")] = seed.btf;
    }
  }
  return seeds;
}

// ---- CUDA GPU core dumps (cuda_core) -------------------------------------------------------

std::vector<std::pair<std::string, std::string>> cuda_core_seeds() {
  std::vector<std::pair<std::string, std::string>> seeds;
  for (uint32_t row : {72u, 80u, 88u}) {
    synthetic::CudaDumpSpec spec;
    spec.device_row = row;
    spec.meta = row == 88;
    seeds.push_back({"rows-" + std::to_string(row) + ".nvcudmp", synthetic::cuda_dump(spec)});
  }
  synthetic::CudaDumpSpec extended;
  extended.extended = true;
  extended.filler_sections = 8;
  seeds.push_back({"extended.nvcudmp", synthetic::cuda_dump(extended)});
  synthetic::CudaDumpSpec skipped;
  skipped.flags |= cudacore::kFlagSkipGlobalMemory;
  skipped.memory.clear();
  seeds.push_back({"skip-global.nvcudmp", synthetic::cuda_dump(skipped)});
  seeds.push_back({"gzip.nvcudmp.gz", synthetic::gzip(synthetic::cuda_dump({}))});
  seeds.push_back({"gzip-two-members.nvcudmp.gz", synthetic::gzip(synthetic::cuda_dump({}), 2)});
  {  // the CUPTI copy-out's shape: memory, then mlfx's .mlfx.unreadable table
    cudacore::CoreWriter w;
    w.add_memory(0x7f0000000000, synthetic::pattern(4096, 1));
    w.add_memory(0x7f0000010000, synthetic::pattern(512, 2));
    w.add_unreadable_table(3, [] { return cudacore::CoreWriter::Ranges{{0x7f0000000800, 0x800}}; });
    std::string dump;
    std::string error;
    if (!w.write([&dump](const void* p, size_t n) { return dump.append(static_cast<const char*>(p), n), true; }, &error))
      die("writing the unreadable-table seed: " + error);
    seeds.push_back({"copy-out-unreadable.nvcudmp", dump});
  }
  return seeds;
}

int main(int argc, char** argv) {
  std::map<std::string, fs::path> dirs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0 && i + 1 < argc &&
        (a == "--bundle_reader" || a == "--manifest" || a == "--custody" || a == "--keys" ||
         a == "--elf_core" || a == "--python_objects" || a == "--wire" || a == "--safetensors" ||
         a == "--physical" || a == "--btf" || a == "--kernel" || a == "--capture_request" || a == "--cuda_core")) {
      dirs[a.substr(2)] = argv[++i];
    } else {
      die("usage: make_corpus [--bundle_reader DIR] [--manifest DIR] [--custody DIR] [--keys DIR]"
          " [--elf_core DIR] [--python_objects DIR] [--wire DIR] [--safetensors DIR] [--physical DIR]"
          " [--btf DIR] [--kernel DIR] [--capture_request DIR] [--cuda_core DIR]"
          " (unexpected '" + a + "')");
    }
  }
  if (dirs.empty()) die("no corpus directory given");
  for (const auto& [target, dir] : dirs) fs::create_directories(dir);

  size_t files = 0;
  auto put = [&](const std::string& target, const std::string& name, std::string_view data) {
    auto it = dirs.find(target);
    if (it == dirs.end()) return;
    write_file(it->second, name, data);
    ++files;
  };

  if (dirs.count("bundle_reader") || dirs.count("manifest") || dirs.count("custody")) {
    const fs::path tmp = dirs.begin()->second;
    const std::vector<BundleSpec> specs = {
        {"no-streams", {}},
        {"empty-stream", {{"empty", "/dev/null", 0, false}}},
        {"one-stream", {{"memory.bin", "/proc/4242/mem", 6000, false}}},
        {"three-streams",
         {{"weights", "pid 4242 heap", 100, false},
          {"exactly-one-chunk", "stdin", bundle::kMinChunkSize, false},
          {"notes.txt", "/tmp/notes.txt", 5000, true}},
         /*legacy_hashes=*/true,
         {{"target", {{"pid", 4242}, {"comm", "python3"}}}, {"model", "resnet"}}},
    };
    for (const BundleSpec& spec : specs) {
      Sealed s = seal(spec, tmp);
      put("bundle_reader", spec.file + ".mlfx", s.bundle);
      put("manifest", spec.file + ".manifest.json", s.manifest);
      put("custody", spec.file + ".custody.jsonl", s.custody);
    }
  }
  if (dirs.count("custody"))
    for (const auto& [name, text] : custody_logs()) put("custody", name, text);

  for (const auto& [name, frame] : wire_frames()) put("wire", name, frame);

  const std::string dk = fuzz::kFixedDeviceKeyPem, dp = fuzz::kFixedDevicePubPem;
  const std::string lk = fuzz::kFixedLabKeyPem, lp = fuzz::kFixedLabPubPem;
  put("keys", "device.key", dk);
  put("keys", "device.pub", dp);
  put("keys", "lab.key", lk);
  put("keys", "lab.pub", lp);
  put("keys", "lab-and-device.pub", lp + dp);      // one Ed25519 key too many
  put("keys", "device-then-lab.key", dk + lk);     // likewise, private
  put("keys", "mixed.pem", dk + dp);               // private and public together
  put("keys", "lab-reversed.key", lk.substr(lk.find("-----BEGIN", 1)) + lk.substr(0, lk.find("-----BEGIN", 1)));

  if (dirs.count("elf_core")) {
    const fs::path dir = dirs.at("elf_core");
    for (const CoreSpec& spec : core_specs()) {
      const std::string core = elf_core(spec);
      if (core.size() >= 64 * 1024) die("elf_core seed " + spec.file + " is too large");
      put("elf_core", spec.file, core);
      check_core((dir / spec.file).string(), spec);
    }
    for (const fuzz::HostileShape& shape : fuzz::hostile_shapes()) {
      const std::string core = fuzz::hostile_core(shape, kHostileSeedBytes), name = "hostile-" + shape.name + ".core";
      if (core.size() >= 256 * 1024) die("elf_core seed " + name + " is too large");
      put("elf_core", name, core);
      check_hostile_core((dir / name).string());
    }
  }
  if (dirs.count("python_objects")) {
    for (const auto& [name, input] : python_object_seeds()) put("python_objects", name, input);
    for (const auto& [name, input] : hostile_object_seeds()) put("python_objects", name, input);
  }

  for (const auto& [name, file] : safetensors_seeds()) put("safetensors", name, file);
  if (dirs.count("physical"))
    for (const auto& [name, input] : physical_seeds()) put("physical", name, input);
  if (dirs.count("btf"))
    for (const auto& [name, input] : btf_seeds()) put("btf", name, input);
  if (dirs.count("kernel"))
    for (const auto& [name, input] : kernel_seeds()) put("kernel", name, input);
  if (dirs.count("capture_request"))
    for (const auto& [name, input] : capture_request_seeds()) put("capture_request", name, input);

  if (dirs.count("cuda_core"))
    for (const auto& [name, input] : cuda_core_seeds()) {
      put("cuda_core", name, input);
      auto layer = layers::FileLayer::open((dirs.at("cuda_core") / name).string());
      if (!layer || !layers::CudaCoreLayer::open(std::shared_ptr<const layers::Layer>(std::move(*layer)), 16u << 20))
        die("cuda_core seed " + name + " does not open");
    }

  std::printf("make_corpus: wrote %zu seed files\n", files);
  return 0;
}
