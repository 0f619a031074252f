#include "intake/request_queue.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <tuple>

#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::intake {
namespace {

constexpr const char* kStates[] = {"pending", "delivered", "expired", "refused"};
constexpr char kDeliverySuffix[] = ".delivery.json";

Status make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0750) != 0 && errno != EEXIST)
    return fail(Errc::kIo, "cannot create " + path + ": " + errno_text(errno));
  return {};
}

// Regular files of `dir` (no links, no dot files), sorted; directories go to `subdirs`.
std::vector<std::string> entries(const std::string& dir, std::vector<std::string>* subdirs = nullptr) {
  std::vector<std::string> files;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return files;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name[0] == '.') continue;
    struct stat st;
    if (::lstat((dir + "/" + name).c_str(), &st) != 0) continue;
    if (S_ISREG(st.st_mode)) files.push_back(name);
    else if (S_ISDIR(st.st_mode) && subdirs) subdirs->push_back(name);
  }
  ::closedir(d);
  std::sort(files.begin(), files.end());
  if (subdirs) std::sort(subdirs->begin(), subdirs->end());
  return files;
}

// "<request id>.json", the name a request is queued under.
std::optional<std::string> request_id_of(const std::string& name) {
  if (!name.ends_with(".json") || name.ends_with(kDeliverySuffix)) return std::nullopt;
  std::string id = name.substr(0, name.size() - 5);
  if (!request::valid_id128(id)) return std::nullopt;
  return id;
}

// A request file: the canonical text and a newline.
Result<request::SignedCaptureRequest> read_request(const std::string& path) {
  MLFX_ASSIGN(std::string text, read_small_file(path, request::kMaxSignedRequestSize + 1));
  if (text.ends_with('\n')) text.pop_back();
  return request::parse_signed_request(text);
}

}  // namespace

json::Json QueuedRequest::to_json() const {
  json::Json j = {{"state", state}, {"device", device}, {"name", name}, {"path", path}};
  if (signed_request) {
    j["request"] = request::to_json(signed_request->request);
    j["signer"] = signed_request->signer;
  }
  if (!problem.empty()) j["problem"] = problem;
  if (delivery) j["delivery"] = *delivery;
  return j;
}

Result<RequestQueue> RequestQueue::open(const std::string& store_dir) {
  struct stat st;
  if (::stat(store_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(Errc::kNotFound, store_dir + " is not a directory: give the evidence store of 'mlfx serve --store'");
  const std::string dir = store_dir + "/requests";
  MLFX_TRY(make_dir(dir));
  for (const char* state : kStates) MLFX_TRY(make_dir(dir + "/" + state));
  return RequestQueue(dir);
}

std::string RequestQueue::state_dir(const std::string& state, const std::string& device) const {
  return dir_ + "/" + state + "/" + device;
}

Result<std::string> RequestQueue::enqueue(const request::SignedCaptureRequest& s) {
  const request::CaptureRequest& r = s.request;
  MLFX_TRY(request::validate(r));
  const std::string name = r.request_id + ".json";
  for (const char* state : kStates) {
    const std::string path = state_dir(state, r.device) + "/" + name;
    if (::access(path.c_str(), F_OK) == 0)
      return fail(Errc::kExists, "request " + r.request_id + " is already " + state + " (" + path + ")");
  }
  const std::string dir = state_dir("pending", r.device);
  MLFX_TRY(make_dir(dir));
  // Whole before it has its name: the intake may look at any moment.
  const std::string tmp = dir + "/." + r.request_id + ".tmp";
  MLFX_TRY(write_new_file(tmp, s.text() + "\n", 0640));
  const std::string path = dir + "/" + name;
  const int linked = ::link(tmp.c_str(), path.c_str());
  const int err = errno;
  ::unlink(tmp.c_str());
  if (linked != 0) return fail(Errc::kIo, "cannot queue " + path + ": " + errno_text(err));
  MLFX_TRY(fsync_dir(dir));
  return path;
}

void RequestQueue::move_aside(const std::string& from_dir, const std::string& name, const std::string& state,
                              const std::string& device) const {
  const std::string to = state_dir(state, device);
  if (!make_dir(to)) return;
  if (::rename((from_dir + "/" + name).c_str(), (to + "/" + name).c_str()) == 0) {
    (void)fsync_dir(to);
    (void)fsync_dir(from_dir);
  }
}

RequestQueue::Batch RequestQueue::pending_for(const std::string& device_id, size_t max, int64_t now) {
  Batch batch;
  if (!request::valid_device_id(device_id)) return batch;  // no directory can be named for it
  const std::string dir = state_dir("pending", device_id);
  std::vector<request::SignedCaptureRequest> ready;
  for (const std::string& name : entries(dir)) {
    auto event = [&](const char* type, const std::string& why) {
      batch.events.push_back({{"event", type}, {"device_id", device_id}, {"file", name}, {"reason", why}});
    };
    const auto id = request_id_of(name);
    if (!id) continue;  // not a request's name (an editor's backup, say): left alone
    auto s = read_request(dir + "/" + name);
    std::string problem;
    if (!s) problem = s.error().to_string();
    else if (s->request.request_id != *id) problem = "the file holds request " + s->request.request_id;
    else if (s->request.device != device_id) problem = "the request is for device '" + s->request.device + "'";
    if (!problem.empty()) {
      move_aside(dir, name, "refused", device_id);
      event("request_refused", problem + ": moved to requests/refused, never delivered");
      continue;
    }
    auto expires = request::parse_utc_seconds(s->request.expires_utc);
    if (!expires || *expires <= now) {
      move_aside(dir, name, "expired", device_id);
      event("request_expired", "expired at " + s->request.expires_utc + " before the device asked");
      continue;
    }
    ready.push_back(std::move(*s));
  }
  std::sort(ready.begin(), ready.end(), [](const auto& a, const auto& b) {
    return std::tie(a.request.issued_utc, a.request.request_id) < std::tie(b.request.issued_utc, b.request.request_id);
  });
  batch.more = ready.size() > max;
  if (ready.size() > max) ready.resize(max);
  batch.requests = std::move(ready);
  return batch;
}

Result<std::optional<json::Json>> RequestQueue::acknowledge(const Uploader& who, const wire::RequestAck& ack) {
  if (!request::valid_device_id(who.device_id) || !request::valid_id128(ack.request_id))
    return std::optional<json::Json>{};
  const std::string name = ack.request_id + ".json";
  const std::string from = state_dir("pending", who.device_id), to = state_dir("delivered", who.device_id);
  auto text = read_small_file(from + "/" + name, request::kMaxSignedRequestSize + 1);
  if (!text) return std::optional<json::Json>{};  // gone: another session of this device took it
  MLFX_TRY(make_dir(to));
  json::Json record = {{"request_id", ack.request_id},
                       {"request_sha256", crypto::sha256_hex(as_bytes(*text))},
                       {"device_id", who.device_id},
                       {"device_key_fingerprint", who.key_fingerprint},
                       {"certificate_serial", who.certificate_serial},
                       {"peer", who.address},
                       {"delivered_utc", utc_timestamp()},
                       {"device_result", ack.accepted ? "accepted" : "refused"}};
  if (!ack.accepted) record["device_reason"] = ack.reason;
  // The record first: a request in delivered/ always has one. A crash between the two leaves
  // the request pending, and the device refuses it as a replay when it comes again.
  MLFX_TRY(replace_file(to + "/" + ack.request_id + kDeliverySuffix, json::canonical(record) + "\n", 0640));
  if (::rename((from + "/" + name).c_str(), (to + "/" + name).c_str()) != 0) {
    if (errno == ENOENT) return std::optional<json::Json>{};
    return fail(Errc::kIo, "cannot move " + from + "/" + name + " to " + to + ": " + errno_text(errno));
  }
  MLFX_TRY(fsync_dir(to));
  MLFX_TRY(fsync_dir(from));
  return std::optional<json::Json>(std::move(record));
}

Result<std::vector<QueuedRequest>> RequestQueue::list(const std::string& device) const {
  std::vector<QueuedRequest> all;
  for (const char* state : kStates) {
    std::vector<std::string> devices;
    (void)entries(dir_ + "/" + state, &devices);
    for (const std::string& dev : devices) {
      if (!device.empty() && dev != device) continue;
      const std::string dir = state_dir(state, dev);
      for (const std::string& name : entries(dir)) {
        if (name.ends_with(kDeliverySuffix)) continue;
        QueuedRequest q{state, dev, name, dir + "/" + name, std::nullopt, "", std::nullopt};
        auto s = read_request(q.path);
        if (s) q.signed_request = std::move(*s);
        else q.problem = s.error().to_string();
        if (const auto id = request_id_of(name); id && q.state == "delivered") {
          auto text = read_small_file(dir + "/" + *id + kDeliverySuffix, 64 * 1024);
          if (text) {
            auto record = json::parse(*text, "delivery record");
            if (record) q.delivery = std::move(*record);
          }
        }
        all.push_back(std::move(q));
      }
    }
  }
  return all;
}

}  // namespace mlfx::intake
