// The custody log: append-only, hash-chained, signed events (acquired, sealed, shipped,
// received, verified, opened, analyzed). Serialised as JSON lines; see
// protocol/doc/bundle-format.md "Custody log".
//
// Each event is a JSON object with "prev" = hex SHA-256 of the canonical previous event
// (the first event chains to SHA-256 of "mlfx-custody-v1 genesis\n" || bundle id hex) and
// "signature" = Ed25519 by the actor over "mlfx-custody-v1 event\n" || canonical event
// without "signature". Removing, reordering, inserting or editing any event breaks the chain
// or a signature. A truncated tail is caught by whoever holds a later anchor (the manifest's
// "sealed" event, an intake receipt).
#pragma once

#include <string>
#include <vector>

#include "mlfx/base/json.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::custody {

inline constexpr const char* kEventTypes[] = {"acquired", "sealed",  "shipped", "received",
                                              "verified", "opened", "analyzed"};
bool is_known_event_type(std::string_view type);

// Who performed an event. The public key travels with the event so that the chain can be
// checked without a key store; whether that key is trusted is the caller's decision.
struct Actor {
  std::string role;  // "device", "intake", "lab"
  std::string id;    // device id, host name or analyst
  std::string host;
  std::string user;
};

struct ChainReport {
  size_t events = 0;
  std::vector<std::string> types;         // in order
  std::vector<std::string> fingerprints;  // signer of each event
};

class CustodyLog {
 public:
  explicit CustodyLog(std::string bundle_id_hex) : bundle_id_(std::move(bundle_id_hex)) {}

  // Parses JSON lines; structure only (use verify() for chain and signatures).
  static Result<CustodyLog> parse(std::string_view jsonl, const std::string& bundle_id_hex);

  // Appends a signed event chained to the last one.
  Status append(std::string_view type, const Actor& actor, const crypto::SigningKey& key,
                json::Json parameters, json::Json details);

  // Checks genesis, every link, every signature, sequence numbers and bundle ids.
  Result<ChainReport> verify() const;

  std::string serialize() const;  // JSON lines, one event per line, trailing newline
  const std::vector<json::Json>& events() const { return events_; }
  const std::string& bundle_id() const { return bundle_id_; }

 private:
  std::string bundle_id_;
  std::vector<json::Json> events_;
};

std::string genesis_hash(const std::string& bundle_id_hex);
std::string event_hash(const json::Json& event);

}  // namespace mlfx::custody
