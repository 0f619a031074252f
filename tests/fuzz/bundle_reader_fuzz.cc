// Fuzzes the whole read path of an evidence bundle: BundleReader::open (record grammar, chunk
// tables, manifest, custody log, cross-checks), then every verify_* call, and unwrapping the
// data key with the fixed lab key and decrypting every stream into a discarding sink.
//
// The input is the whole bundle file. It is handed to the reader through a memfd opened by
// path (/proc/self/fd/N), so the reader's real pread path runs and nothing touches the disk.
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

#include "fuzz_support.h"
#include "mlfx/bundle/reader.h"

namespace {

using namespace mlfx;

void run(const std::string& path) {
  auto reader = bundle::BundleReader::open(path);
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
  run(path);
  return 0;
}
