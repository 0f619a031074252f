// Fuzzes the custody log: CustodyLog::parse (JSON lines) for the fixed bundle id of
// fixed_keys.h, then verify() (hash chain, sequence numbers, Ed25519 signatures).
//
// Invariants: verify() reports exactly one type and one signer per event; a log that
// verifies serialises to text that parses and verifies again with the same report; and a
// verified log extended with append() by the fixed device key still verifies.
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_support.h"
#include "mlfx/custody/custody_log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mlfx;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto log = custody::CustodyLog::parse(text, fuzz::kFixedBundleIdHex);
  if (!log) return 0;
  auto report = log->verify();
  if (!report) return 0;

  if (report->events != log->events().size() || report->types.size() != report->events ||
      report->fingerprints.size() != report->events)
    fuzz::invariant_failed("verify() reports every event", std::to_string(report->events));

  const std::string text2 = log->serialize();
  auto log2 = custody::CustodyLog::parse(text2, fuzz::kFixedBundleIdHex);
  if (!log2) fuzz::invariant_failed("a verified log reparses", log2.error().to_string());
  auto report2 = log2->verify();
  if (!report2) fuzz::invariant_failed("a verified log re-verifies", report2.error().to_string());
  if (report2->types != report->types || report2->fingerprints != report->fingerprints)
    fuzz::invariant_failed("re-verification gives the same report", text2);

  // Appending to a verified chain keeps it valid.
  custody::Actor actor{"lab", "fuzz", "fuzz-host", "fuzz-user"};
  auto st = log2->append("analyzed", actor, *fuzz::fixed_device_key().signing,
                         json::Json::object(), json::Json::object());
  if (!st) fuzz::invariant_failed("append() to a verified log", st.error().to_string());
  auto report3 = log2->verify();
  if (!report3 || report3->events != report->events + 1)
    fuzz::invariant_failed("a verified log with one more event verifies",
                           report3 ? "wrong count" : report3.error().to_string());
  return 0;
}
