// One intake connection's side of the protocol (wire-protocol.md §4-7) as a state machine:
// frames in, frames out, no sockets. The server feeds it what it reads and sends what it
// returns; tests and the fuzzer drive it directly.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "intake/evidence_store.h"

namespace mlfx::intake {

struct SessionReply {
  std::vector<Bytes> frames;  // to send, in order
  bool close = false;         // then close the connection
};

// What a connection did, for the server's log.
struct UploadLog {
  std::string bundle_id, bundle_digest, result;  // result: "stored", "duplicate", "partial", an error code
  uint64_t file_size = 0, received_bytes = 0;
  double commit_ms = 0;  // fsync, link, custody and receipt
};

class IntakeSession {
 public:
  IntakeSession(EvidenceStore& store, Uploader who, uint32_t max_record);

  SessionReply handle(wire::FrameType type, ByteView body);
  // The largest frame body the reader may accept next.
  uint32_t max_record() const { return max_record_; }
  // Uploads this connection worked on; the one in progress last.
  std::vector<UploadLog> uploads() const;
  const Uploader& uploader() const { return who_; }

 private:
  enum class State { kHello, kOffer, kRecords, kClosed };
  SessionReply on_hello(ByteView body);
  SessionReply on_offer(ByteView body);
  SessionReply on_record(ByteView body);
  SessionReply store_upload();
  SessionReply refuse(const wire::ErrorMessage& e);
  void finish_upload(const std::string& result);

  EvidenceStore& store_;
  Uploader who_;
  uint32_t max_record_;
  State state_ = State::kHello;
  std::optional<EvidenceStore::Claim> claim_;
  std::string started_utc_;
  uint64_t accepted_before_ = 0;
  std::vector<UploadLog> done_;
  std::optional<UploadLog> current_;
};

}  // namespace mlfx::intake
