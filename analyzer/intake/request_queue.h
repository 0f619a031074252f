// Capture requests from the lab waiting for their device (protocol/doc/capture-request.md,
// wire-protocol.md §12), kept in the intake's store:
//
//   DIR/requests/pending/<device>/<request id>.json     signed requests (`mlfx request capture --store`)
//   DIR/requests/delivered/<device>/<request id>.json   acknowledged by that device, beside
//       <request id>.delivery.json                      when, to which certificate, what the device said
//   DIR/requests/expired/<device>/<request id>.json     past their expiry before the device asked
//   DIR/requests/refused/<device>/<name>                files the intake will not deliver: malformed,
//                                                       for another device, named other than their id
//
// The file system is the queue: `mlfx request` adds while `mlfx serve` runs (a complete file
// linked into place), and a rename moves a request on, so that of two sessions of one device
// only one delivers it. A request goes only to the device whose certificate carries the id it
// names: the directory it lies in and the id it holds must both be that one.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "intake/evidence_store.h"
#include "mlfx/request/capture_request.h"
#include "mlfx/wire/messages.h"

namespace mlfx::intake {

// One request as `mlfx request list` shows it.
struct QueuedRequest {
  std::string state;  // "pending", "delivered", "expired", "refused"
  std::string device, name, path;
  std::optional<request::SignedCaptureRequest> signed_request;  // absent when it does not parse
  std::string problem;           // why it does not parse (refused files)
  std::optional<json::Json> delivery;  // delivered: the delivery record
  json::Json to_json() const;
};

class RequestQueue {
 public:
  // `store_dir` is the intake's store (`mlfx serve --store`); DIR/requests is created as needed.
  static Result<RequestQueue> open(const std::string& store_dir);
  const std::string& dir() const { return dir_; }

  // Queues a signed request for its device; refuses a request id already queued or handled.
  // Returns the path it was written to.
  Result<std::string> enqueue(const request::SignedCaptureRequest& s);

  // Up to `max` of the device's pending requests, the oldest issued first, as of `now`
  // (seconds since the epoch). Requests past their expiry move to expired/, files that are no
  // request for this device to refused/; each such move is an event for the server's log.
  struct Batch {
    std::vector<request::SignedCaptureRequest> requests;
    bool more = false;  // more are pending beyond these
    std::vector<json::Json> events;
  };
  Batch pending_for(const std::string& device_id, size_t max, int64_t now);

  // The device acknowledged a request it was handed: the request moves to delivered/ with its
  // delivery record (returned, for the journal). nullopt when it is no longer pending (another
  // session of the device delivered it).
  Result<std::optional<json::Json>> acknowledge(const Uploader& who, const wire::RequestAck& ack);

  // Every request, of one device or all, by state then name.
  Result<std::vector<QueuedRequest>> list(const std::string& device = "") const;

 private:
  explicit RequestQueue(std::string dir) : dir_(std::move(dir)) {}
  std::string state_dir(const std::string& state, const std::string& device) const;
  void move_aside(const std::string& from_dir, const std::string& name, const std::string& state,
                  const std::string& device) const;

  std::string dir_;  // DIR/requests
};

}  // namespace mlfx::intake
