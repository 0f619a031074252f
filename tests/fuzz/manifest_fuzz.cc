// Fuzzes Manifest::parse, the parser of the (signed) MNFT record, on untrusted JSON.
//
// Invariants: whatever parse accepts, to_json()/serialize() must turn into a manifest that
// parses again, and serialisation must then be stable (serialize(parse(serialize(m))) ==
// serialize(m)), since signatures and custody events are made over these bytes.
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_support.h"
#include "mlfx/bundle/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mlfx;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto m = bundle::Manifest::parse(text);
  if (!m) return 0;

  const json::Json j = m->to_json();
  if (!j.is_object()) fuzz::invariant_failed("to_json() gives an object", j.dump());
  const std::string once = m->serialize();
  if (once != json::canonical(j))
    fuzz::invariant_failed("serialize() is canonical(to_json())", once);

  auto again = bundle::Manifest::parse(once);
  if (!again)
    fuzz::invariant_failed("a serialised manifest parses again",
                           again.error().to_string() + "\n  serialised: " + once);
  const std::string twice = again->serialize();
  if (twice != once)
    fuzz::invariant_failed("serialisation is stable", "first:  " + once + "\n  second: " + twice);
  if (again->bundle_id != m->bundle_id || again->streams.size() != m->streams.size() ||
      again->recipients.size() != m->recipients.size() || again->chunk_size != m->chunk_size)
    fuzz::invariant_failed("the reparsed manifest has the same fields", once);
  return 0;
}
