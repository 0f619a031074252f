// One intake connection's side of the protocol (wire-protocol.md §4-7) as a state machine:
// frames in, frames out, no sockets. The server feeds it what it reads and sends what it
// returns; tests and the fuzzer drive it directly.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "intake/admission.h"
#include "intake/evidence_store.h"
#include "intake/request_queue.h"

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
  // `budget`, when given, is where the session takes the memory its record buffers may need.
  // `requests`, when given, holds the lab's capture requests this session hands to its device
  // (wire-protocol.md §12); without it the intake offers none.
  IntakeSession(EvidenceStore& store, Uploader who, uint32_t max_record, MemoryBudget* budget = nullptr,
                RequestQueue* requests = nullptr);
  IntakeSession(const IntakeSession&) = delete;
  IntakeSession& operator=(const IntakeSession&) = delete;
  ~IntakeSession();

  // `storage`, when given, is the connection's buffer that holds `body`: the session may take
  // it (a chunk record goes on to be checked and written without a copy) and leave a spare.
  SessionReply handle(wire::FrameType type, ByteView body, transport::FrameBuffer* storage = nullptr);
  // The largest RECORD body the reader may accept next (wire-protocol.md §3): none before an
  // accepted OFFER; until the metadata verifies, the largest metadata unit the offer allows;
  // then one chunk record of the offer's chunk size.
  uint32_t max_record() const { return record_limit_; }
  // Uploads this connection worked on; the one in progress last.
  std::vector<UploadLog> uploads() const;
  const Uploader& uploader() const { return who_; }
  // HELLO was taken: the session is established.
  bool established() const { return state_ != State::kHello; }
  // What the session did with capture requests since the last call, for the server's log.
  std::vector<json::Json> take_events() { return std::exchange(events_, {}); }

 private:
  enum class State { kHello, kOffer, kRecords, kClosed };
  SessionReply on_hello(ByteView body);
  SessionReply on_offer(ByteView body);
  SessionReply on_record(ByteView body, transport::FrameBuffer* storage);
  SessionReply on_request_poll(ByteView body);
  SessionReply store_upload();
  SessionReply dispatch(wire::FrameType type, ByteView body, transport::FrameBuffer* storage);
  SessionReply refuse(const wire::ErrorMessage& e);
  void finish_upload(const std::string& result);
  // Sets the RECORD limit for the state reached, and holds the memory it needs.
  std::optional<wire::ErrorMessage> fit_limits();

  EvidenceStore& store_;
  Uploader who_;
  uint32_t max_record_;
  uint32_t record_limit_ = 0;
  MemoryBudget* budget_;
  uint64_t held_memory_ = 0;
  State state_ = State::kHello;
  std::optional<EvidenceStore::Claim> claim_;
  std::string started_utc_;
  uint64_t accepted_before_ = 0;
  std::vector<UploadLog> done_;
  std::optional<UploadLog> current_;
  RequestQueue* requests_;
  std::set<std::string> offered_;  // request ids handed to the device and not acknowledged yet
  std::vector<json::Json> events_;
};

}  // namespace mlfx::intake
