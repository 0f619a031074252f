// Fuzzes the parser of capture requests from the lab (protocol/doc/capture-request.md) and
// its stateless checks, on untrusted text as an intake (or whoever sits in its place) sends it.
//
// Invariants: what parses is within the size bound, passes validate(), and re-encodes to a
// text that parses to itself; with the fixed device key as the one signer (the seeds are
// signed by it, like a lab request key), for the request's own device at its issue time,
// check_request accepts exactly when that key's signature over the request verifies.
#include <cstdint>
#include <string>

#include "fuzz_support.h"
#include "mlfx/request/capture_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mlfx;
  auto s = request::parse_signed_request(as_chars({data, size}));
  if (!s) return 0;
  const std::string text = s->text();
  if (text.size() > request::kMaxSignedRequestSize)
    fuzz::invariant_failed("an accepted request is within the size bound", std::to_string(text.size()));
  if (auto st = request::validate(s->request); !st)
    fuzz::invariant_failed("an accepted request validates", st.error().to_string());
  auto again = request::parse_signed_request(text);
  if (!again || again->text() != text) fuzz::invariant_failed("the canonical text parses to itself", text);

  const crypto::VerifyKey& signer = fuzz::fixed_device_key().signing->public_key();
  request::RequestPolicy policy{{signer}, s->request.device, request::kMaxLifetime, std::chrono::seconds(60)};
  auto issued = request::parse_utc_seconds(s->request.issued_utc);
  if (!issued) fuzz::invariant_failed("an accepted request's issue time parses", s->request.issued_utc);
  const bool signed_by_it = s->signer == signer.fingerprint() &&
                            signer.verify(request::signing_message(s->request), s->signature);
  auto key = request::check_request(*s, policy, *issued);
  if (key.has_value() != signed_by_it)
    fuzz::invariant_failed("checked exactly when the signature verifies",
                           key ? "accepted without a valid signature" : key.error().to_string());
  return 0;
}
