#include "intake/intake_session.h"

#include <algorithm>
#include <chrono>
#include <ctime>

#include "mlfx/base/clock.h"
#include "mlfx/base/version.h"

namespace mlfx::intake {

using wire::FrameType;
using wire::WireError;

// Record buffers of an upload past its metadata: the frame being read, one record being
// checked, one being written, two spares (PartialUpload).
constexpr uint64_t kChunkBuffers = 5;

IntakeSession::IntakeSession(EvidenceStore& store, Uploader who, uint32_t max_record, MemoryBudget* budget,
                             RequestQueue* requests)
    : store_(store), who_(std::move(who)), max_record_(max_record), budget_(budget), requests_(requests) {}

IntakeSession::~IntakeSession() {
  claim_.reset();  // the upload's buffers go first
  if (budget_) budget_->change(who_.key_fingerprint, held_memory_, 0);
}

std::optional<wire::ErrorMessage> IntakeSession::fit_limits() {
  uint64_t limit = 0, memory = 0;
  if (state_ == State::kRecords && claim_ && *claim_) {
    const wire::Offer& o = (*claim_)->offer();
    if ((*claim_)->verified()) {
      limit = chunk_record_limit(o);
      memory = kChunkBuffers * limit;
    } else {
      limit = metadata_unit_limit(o) + wire::kRecordOffsetSize;
      memory = limit;  // metadata units go from the frame to the file
    }
  }
  if (budget_ && !budget_->change(who_.key_fingerprint, held_memory_, memory))
    return wire::ErrorMessage{WireError::kBusy,
                              "this upload needs " + std::to_string(memory) + " bytes of buffers, and the intake's "
                              "memory for uploads in progress (" + std::to_string(budget_->limit()) + " bytes, " +
                              std::to_string(budget_->device_limit()) + " per device; --upload-memory) is taken; "
                              "retry later"};
  held_memory_ = budget_ ? memory : 0;
  record_limit_ = static_cast<uint32_t>(std::min<uint64_t>(limit, max_record_));
  return std::nullopt;
}

std::vector<UploadLog> IntakeSession::uploads() const {
  std::vector<UploadLog> all = done_;
  if (current_) {
    all.push_back(*current_);
    all.back().result = "partial";
    if (claim_ && *claim_) all.back().received_bytes = (*claim_)->accepted_bytes() - accepted_before_;
  }
  return all;
}

void IntakeSession::finish_upload(const std::string& result) {
  if (!current_) return;
  if (claim_ && *claim_) current_->received_bytes = (*claim_)->accepted_bytes() - accepted_before_;
  current_->result = result;
  done_.push_back(*current_);
  current_.reset();
  claim_.reset();
}

SessionReply IntakeSession::refuse(const wire::ErrorMessage& e) {
  finish_upload(wire::wire_error_name(e.code));
  state_ = State::kClosed;
  return {{wire::encode_json_frame(FrameType::kError, wire::to_json(e))}, true};
}

SessionReply IntakeSession::handle(FrameType type, ByteView body, transport::FrameBuffer* storage) {
  SessionReply reply = dispatch(type, body, storage);
  if (reply.close) {
    record_limit_ = 0;
    return reply;
  }
  if (auto e = fit_limits()) {
    SessionReply refused = refuse(*e);
    reply.frames.insert(reply.frames.end(), refused.frames.begin(), refused.frames.end());
    reply.close = true;
  }
  return reply;
}

SessionReply IntakeSession::dispatch(FrameType type, ByteView body, transport::FrameBuffer* storage) {
  if (state_ == State::kClosed) return {{}, true};
  switch (type) {
    case FrameType::kPing:
      return {{wire::encode_json_frame(FrameType::kPong, json::Json::object())}, false};
    case FrameType::kPong:
      return {};
    case FrameType::kError:  // the client gives up; its reason goes to the log
      finish_upload("client_error");
      state_ = State::kClosed;
      return {{}, true};
    case FrameType::kHello:
      if (state_ == State::kHello) return on_hello(body);
      break;
    case FrameType::kOffer:
      if (state_ == State::kOffer || state_ == State::kRecords) return on_offer(body);
      break;
    case FrameType::kRecord:
      if (state_ == State::kRecords) return on_record(body, storage);
      break;
    case FrameType::kRequestPoll:  // between uploads, from an intake that offers requests
      if (state_ == State::kOffer && requests_) return on_request_poll(body);
      break;
    default:
      break;
  }
  return refuse({WireError::kBadFrame, std::string(wire::frame_type_name(type)) + " is out of order here"});
}

SessionReply IntakeSession::on_hello(ByteView body) {
  auto hello = wire::parse_hello(body);
  if (!hello) return refuse({WireError::kBadFrame, hello.error().to_string()});
  bool ok = false;
  for (uint32_t v : hello->versions) ok |= v == wire::kProtocolVersion;
  if (!ok) return refuse({WireError::kUnsupportedVersion, "this intake speaks version 1 only"});
  wire::Welcome w;
  w.device_id = who_.device_id;
  w.key_fingerprint = who_.key_fingerprint;
  w.intake_key_fingerprint = store_.intake_key().fingerprint();
  w.max_record = max_record_;
  w.max_bundle = store_.max_bundle();
  if (requests_) w.features.push_back(wire::kCaptureRequestsFeature);
  state_ = State::kOffer;
  return {{wire::encode_json_frame(FrameType::kWelcome, wire::to_json(w))}, false};
}

SessionReply IntakeSession::on_offer(ByteView body) {
  finish_upload("abandoned");  // a new offer ends the upload in progress, which stays resumable
  auto offer = wire::parse_offer(body);
  if (!offer) return refuse({WireError::kBadFrame, offer.error().to_string()});
  if (offer->chunk_size < bundle::kMinChunkSize || offer->chunk_size > bundle::kMaxChunkSize)
    return refuse({WireError::kBadFrame, "OFFER: impossible chunk size " + std::to_string(offer->chunk_size)});
  if (uint64_t(offer->chunk_size) + bundle::kRecordHeaderSize + crypto::kTagSize + wire::kRecordOffsetSize > max_record_)
    return refuse({WireError::kBundleTooLarge, "chunks of " + std::to_string(offer->chunk_size) +
                                                   " bytes do not fit this intake's record limit"});
  if (offer->file_size < bundle::kFileHeaderSize + 4 * bundle::kRecordHeaderSize)
    return refuse({WireError::kBadBundle, "a bundle of " + std::to_string(offer->file_size) + " bytes is impossible"});
  current_ = UploadLog{offer->bundle_id, offer->bundle_digest, "", offer->file_size, 0};
  if (auto stored = store_.find(offer->bundle_digest)) {
    if (stored->receipt.device_key_fingerprint != who_.key_fingerprint)
      return refuse({WireError::kWrongDevice, "this bundle was uploaded by another device"});
    finish_upload("duplicate");
    wire::UploadStatus st;
    st.state = wire::UploadState::kStored;
    st.receipt = std::move(*stored);
    return {{wire::encode_json_frame(FrameType::kStatus, wire::to_json(st))}, false};
  }
  auto claim = store_.begin(who_, *offer);
  if (!claim) return refuse(claim.error());
  claim_ = std::move(*claim);
  accepted_before_ = (*claim_)->accepted_bytes();  // by earlier connections
  started_utc_ = utc_timestamp();
  wire::UploadStatus st;
  st.have = (*claim_)->held();
  st.state = st.have.empty() ? wire::UploadState::kNew : wire::UploadState::kPartial;
  state_ = State::kRecords;
  Bytes status = wire::encode_json_frame(FrameType::kStatus, wire::to_json(st));
  if (!(*claim_)->complete()) return {{std::move(status)}, false};
  // Everything arrived before, but storing it failed (e.g. a full disk): the device sends no
  // records, so the answer to its empty run follows the STATUS at once.
  SessionReply reply = store_upload();
  reply.frames.insert(reply.frames.begin(), std::move(status));
  return reply;
}

SessionReply IntakeSession::on_record(ByteView body, transport::FrameBuffer* storage) {
  auto record = wire::parse_record(body);
  if (!record) return refuse({WireError::kBadFrame, record.error().to_string()});
  PartialUpload& upload = **claim_;
  if (auto ok = upload.accept(record->offset, record->unit, storage); !ok) {
    current_->received_bytes = upload.accepted_bytes() - accepted_before_;
    if (ok.error().code == WireError::kBadBundle || ok.error().code == WireError::kWrongDevice)
      store_.discard(*claim_);  // nothing of a bundle that failed verification is kept
    return refuse(ok.error());
  }
  if (!upload.complete()) return {};
  return store_upload();
}

// Capture requests (wire-protocol.md §12): the acknowledgements of what this session handed
// over move those requests to delivered/ with a signed journal note; then the next ones for
// this device, the device of the certificate, whatever the device says it is.
SessionReply IntakeSession::on_request_poll(ByteView body) {
  auto poll = wire::parse_request_poll(body);
  if (!poll) return refuse({WireError::kBadFrame, poll.error().to_string()});
  for (const wire::RequestAck& ack : poll->acks) {
    if (offered_.erase(ack.request_id) == 0) continue;  // not handed over here: nothing to acknowledge
    auto record = requests_->acknowledge(who_, ack);
    if (!record) {
      events_.push_back({{"event", "request_ack_failed"}, {"device_id", who_.device_id},
                         {"request_id", ack.request_id}, {"error", record.error().to_string()}});
      continue;
    }
    if (!*record) continue;  // another session of this device delivered it
    json::Json event = **record;
    if (auto st = store_.journal("request_delivered", **record); !st) event["journal_error"] = st.error().to_string();
    event["event"] = "request_delivered";
    events_.push_back(std::move(event));
  }
  wire::RequestBatch answer;
  if (poll->max > 0) {
    RequestQueue::Batch batch = requests_->pending_for(who_.device_id, poll->max, static_cast<int64_t>(::time(nullptr)));
    for (json::Json& e : batch.events) events_.push_back(std::move(e));
    for (const request::SignedCaptureRequest& s : batch.requests) {
      offered_.insert(s.request.request_id);
      answer.requests.push_back(request::to_json(s));
      events_.push_back({{"event", "request_offered"}, {"device_id", who_.device_id},
                         {"request_id", s.request.request_id}, {"requester", s.request.requester}});
    }
    answer.more = batch.more;
  }
  return {{wire::encode_json_frame(FrameType::kRequests, wire::to_json(answer))}, false};
}

// Every unit is held: store it and answer with the receipt (or the reason it failed).
SessionReply IntakeSession::store_upload() {
  const auto start = std::chrono::steady_clock::now();
  auto receipt = store_.commit(*claim_, who_, started_utc_);
  current_->commit_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (!receipt) return refuse(receipt.error());
  finish_upload("stored");
  state_ = State::kOffer;
  return {{wire::encode_json_frame(FrameType::kReceipt, wire::to_json(*receipt))}, false};
}

}  // namespace mlfx::intake
