// Writes the seed corpora of the fuzz targets:
//
//   make_corpus [--bundle_reader DIR] [--manifest DIR] [--custody DIR] [--keys DIR]
//
// bundle_reader: small valid bundles (chunk size 4 KiB) sealed with BundleWriter, signed by
//                the fixed device key and encrypted to the fixed lab key of fixed_keys.h;
// manifest:      the manifests of those bundles (canonical JSON, as in their MNFT records);
// custody:       their custody logs, plus longer signed logs for the fixed bundle id;
// keys:          the fixed key files and a few combinations of them.
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

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, fs::path> dirs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0 && i + 1 < argc &&
        (a == "--bundle_reader" || a == "--manifest" || a == "--custody" || a == "--keys")) {
      dirs[a.substr(2)] = argv[++i];
    } else {
      die("usage: make_corpus [--bundle_reader DIR] [--manifest DIR] [--custody DIR] [--keys DIR]"
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

  std::printf("make_corpus: wrote %zu seed files\n", files);
  return 0;
}
