// Fuzzes the whole read path of an evidence bundle: BundleReader::open (record grammar, chunk
// tables, manifest, custody log, cross-checks), then every verify_* call, and unwrapping the
// data key with the fixed lab key and decrypting every stream into a discarding sink.
//
// The input is the whole bundle file. It is handed to the reader through a memfd opened by
// path (/proc/self/fd/N), so the reader's real pread path runs and nothing touches the disk.
//
// Then the intake's path (BundleReader::open_metadata): the metadata units alone, at the
// offsets open() found, or, when open() refuses the input, at every offset where a metadata
// record type appears. A bundle that opens must open from its metadata alone, with the same
// chunk tables and manifest.
//
// Invariant checked beyond "no crash, leak or hang": a bundle whose signature, chunk hashes
// and key commitment all verify must decrypt completely, with exactly the bytes the manifest
// announces (the fuzzer cannot forge the device signature, so anything else is a hole).
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "mlfx/bundle/reader.h"

namespace {

using namespace mlfx;

void run_metadata(const std::string& path, const uint8_t* data, size_t size, const bundle::BundleReader* full) {
  std::vector<uint64_t> offsets;
  if (full) {
    for (const auto& u : full->metadata_units()) offsets.push_back(u.offset);
  } else {
    offsets.push_back(0);
    for (size_t i = bundle::kFileHeaderSize; i + 4 <= size && offsets.size() < 4096; ++i) {
      const uint32_t t = load_le<uint32_t>(data + i);
      if (t == uint32_t(bundle::RecordType::kChunkTable) || t == uint32_t(bundle::RecordType::kManifest) ||
          t == uint32_t(bundle::RecordType::kSignature) || t == uint32_t(bundle::RecordType::kCustody) ||
          t == uint32_t(bundle::RecordType::kEnd))
        offsets.push_back(i);
    }
  }
  auto meta = bundle::BundleReader::open_metadata(path, size, offsets);
  if (!full) return;
  if (!meta) fuzz::invariant_failed("a bundle that opens opens from its metadata units alone", meta.error().to_string());
  if (meta->manifest_bytes() != full->manifest_bytes() || meta->layout().size() != full->layout().size())
    fuzz::invariant_failed("open_metadata finds the manifest and streams open() finds", path);
  for (size_t i = 0; i < full->layout().size(); ++i) {
    const auto& a = full->layout()[i].chunks;
    const auto& b = meta->layout()[i].chunks;
    if (a.size() != b.size()) fuzz::invariant_failed("open_metadata finds the same chunk tables", path);
    for (size_t j = 0; j < a.size(); ++j)
      if (a[j].record_offset != b[j].record_offset || a[j].plaintext_size != b[j].plaintext_size ||
          a[j].record_sha256 != b[j].record_sha256)
        fuzz::invariant_failed("open_metadata finds the same chunk tables", path);
  }
  if (meta->verify_signature().has_value() != full->verify_signature().has_value())
    fuzz::invariant_failed("the signature verdict does not depend on how the bundle was opened", path);
}

void run(const std::string& path, const uint8_t* data, size_t size) {
  auto reader = bundle::BundleReader::open(path);
  run_metadata(path, data, size, reader ? &*reader : nullptr);
  if (!reader) return;
  const auto& r = *reader;
  if (r.manifest().streams.size() != r.layout().size())
    fuzz::invariant_failed("open() cross-checks the stream count", path);

  const bool signature_ok = r.verify_signature().has_value();
  const bool chunks_ok = r.verify_chunks(nullptr).has_value();
  (void)r.verify_custody();

  auto key = r.unwrap_data_key(*fuzz::fixed_lab_key().box);
  if (!key) return;
  const bool must_decrypt = signature_ok && chunks_ok;
  for (size_t i = 0; i < r.layout().size(); ++i) {
    uint64_t received = 0;
    auto st = r.decrypt_stream(
        i, key->view(),
        [&](ByteView chunk) -> Status {
          received += chunk.size();
          return {};
        },
        nullptr);
    if (st && received != r.manifest().streams[i].size)
      fuzz::invariant_failed("a decrypted stream has the manifest's size",
                             "stream " + std::to_string(i) + ": got " + std::to_string(received) +
                                 " bytes, manifest says " +
                                 std::to_string(r.manifest().streams[i].size));
    if (!st && must_decrypt)
      fuzz::invariant_failed("a bundle that verifies decrypts", st.error().to_string());
  }
  // Out-of-range stream indexes are refused, not read.
  if (r.decrypt_stream(r.layout().size(), key->view(), [](ByteView) -> Status { return {}; },
                       nullptr))
    fuzz::invariant_failed("decrypt_stream refuses an index past the last stream", path);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::input_as_file(data, size);
  (void)fuzz::fixed_lab_key();
  run(path, data, size);
  return 0;
}
