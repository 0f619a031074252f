#include "upload/lab_requests.h"

#include "upload/intake_link.h"  // first of the asio users: it includes <utility> before asio

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "mlfx/base/host.h"
#include "mlfx/base/printable.h"
#include "mlfx/crypto/keys.h"
#include "mlfx/transport/frame_channel.h"

namespace mlfx::agent {

namespace asio = boost::asio;
using wire::FrameType;

namespace {

constexpr char kNonceFile[] = "lab-request-nonces.jsonl";
constexpr char kLockFile[] = "lab-request-nonces.lock";
constexpr size_t kMaxNonceFile = 16u << 20;  // far above kMaxNonces lines of about 130 bytes
// Rounds of REQUEST_POLL / REQUESTS in one poll(): at most 16 x 8 requests.
constexpr unsigned kMaxRounds = 16;

int64_t now_seconds() { return static_cast<int64_t>(::time(nullptr)); }

// The agent's own: owned by this user, not writable by group or others.
Status check_owned(const struct stat& st, const std::string& path, const char* what) {
  if (st.st_uid != ::geteuid())
    return fail(Errc::kPermission, path + " (" + what + " of lab requests' nonces) is owned by uid " +
                                       std::to_string(st.st_uid) + ", not by this agent's user");
  if (st.st_mode & 022)
    return fail(Errc::kPermission, path + " (" + what + " of lab requests' nonces) is writable by group or others; "
                                          "run: chmod go-w " + path);
  return {};
}

Result<File> open_owned_file(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return fail(Errc::kIo, "cannot open " + path + ": " + errno_text(errno));
  File f(fd, path);
  struct stat st;
  if (::fstat(fd, &st) != 0) return fail(Errc::kIo, "cannot stat " + path + ": " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) return fail(Errc::kPermission, path + " is not a regular file");
  MLFX_TRY(check_owned(st, path, "the file"));
  return f;
}

std::string nonce_line(const std::string& nonce, const std::string& request_id, int64_t expires) {
  return json::canonical({{"nonce", nonce}, {"request_id", request_id}, {"expires_utc", request::utc_seconds(expires)}}) +
         "\n";
}

// An acknowledgement's reason: short, and whole UTF-8 characters only.
std::string ack_reason(const std::string& why) {
  constexpr size_t kRoom = wire::kMaxAckReason - 16;
  if (why.size() <= kRoom) return why;
  size_t end = kRoom;
  while (end > 0 && (static_cast<unsigned char>(why[end]) & 0xc0) == 0x80) --end;
  return why.substr(0, end) + "...";
}

}  // namespace

// ---- NonceStore ----

Result<NonceStore> NonceStore::open(const std::string& state_dir, int64_t now) {
  struct stat st;
  if (::stat(state_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(Errc::kNotFound, "the state directory " + state_dir + " for lab requests does not exist");
  MLFX_TRY(check_owned(st, state_dir, "the directory"));
  MLFX_ASSIGN(File lock, open_owned_file(state_dir + "/" + kLockFile, O_RDWR));
  if (::flock(lock.fd(), LOCK_EX | LOCK_NB) != 0)
    return fail(Errc::kExists, "another mlfx-agent holds the lab request nonces of " + state_dir + " (" + lock.path() +
                                   "): one agent per state directory");
  NonceStore store(state_dir + "/" + kNonceFile, std::move(lock));
  MLFX_TRY(store.load(now));
  return store;
}

Status NonceStore::load(int64_t now) {
  MLFX_ASSIGN(append_, open_owned_file(path_, O_RDWR | O_APPEND));
  MLFX_ASSIGN(std::string text, read_small_file(path_, kMaxNonceFile));
  size_t line_no = 0, at = 0;
  bool torn = false;
  while (at < text.size()) {
    const size_t end = text.find('\n', at);
    if (end == std::string::npos) {  // the last append did not finish: that request was never honoured
      torn = true;
      break;
    }
    ++line_no;
    const std::string line = text.substr(at, end - at);
    at = end + 1;
    auto damaged = [&](const std::string& why) {
      return fail(Errc::kCorrupt, "line " + std::to_string(line_no) + " of " + path_ + " is damaged (" + why +
                                      "): lab requests are refused until it is repaired or removed (removing it "
                                      "forgets which requests were honoured: unexpired ones could be replayed)");
    };
    auto j = json::parse(line, "nonce record");
    if (!j) return damaged(j.error().message());
    auto nonce = json::get_string(*j, "nonce", "nonce record");
    auto id = json::get_string(*j, "request_id", "nonce record");
    auto expires_text = json::get_string(*j, "expires_utc", "nonce record");
    if (!nonce || !id || !expires_text || !request::valid_id128(*nonce)) return damaged("not a nonce record");
    auto expires = request::parse_utc_seconds(*expires_text);
    if (!expires) return damaged(expires.error().message());
    live_[*nonce] = Entry{*id, *expires};
    ++lines_;
  }
  if (forget_expired(now) > 0 || torn) MLFX_TRY(rewrite());
  return {};
}

size_t NonceStore::forget_expired(int64_t now) {
  return std::erase_if(live_, [&](const auto& kv) { return kv.second.expires + kForgetAfter.count() < now; });
}

// The live nonces alone, atomically in place of the file.
Status NonceStore::rewrite() {
  std::string text;
  for (const auto& [nonce, e] : live_) text += nonce_line(nonce, e.request_id, e.expires);
  MLFX_TRY(replace_file(path_, text, 0600));
  MLFX_ASSIGN(append_, open_owned_file(path_, O_RDWR | O_APPEND));
  lines_ = live_.size();
  return {};
}

Status NonceStore::record(const std::string& nonce, const std::string& request_id, int64_t expires, int64_t now) {
  if (forget_expired(now) > 0 && lines_ > 2 * live_.size() + 1024) MLFX_TRY(rewrite());
  if (live_.size() >= kMaxNonces)
    return fail(Errc::kInvalidArgument, path_ + " holds the nonces of " + std::to_string(kMaxNonces) +
                                            " unexpired requests: no more are honoured until some expire");
  MLFX_ASSIGN(uint64_t size, append_.size());
  const std::string line = nonce_line(nonce, request_id, expires);
  Status st = append_.write_all(as_bytes(line));
  if (st) st = append_.sync();
  if (!st) {
    // No half line may stay before the next one: cut the file back to where it was.
    (void)::ftruncate(append_.fd(), static_cast<off_t>(size));
    return st;
  }
  live_[nonce] = Entry{request_id, expires};
  ++lines_;
  return {};
}

// ---- the verifier ----

Result<LabRequest> verify_lab_request(const json::Json& signed_request, const request::RequestPolicy& policy,
                                      NonceStore& nonces, int64_t now) {
  auto s = request::signed_request_from_json(signed_request);
  if (!s) return fail(std::move(s).error().context("refused a malformed capture request"));
  const request::CaptureRequest& r = s->request;
  const std::string which = "refused request " + r.request_id + " from " + printable(r.requester);
  auto key = request::check_request(*s, policy, now);
  if (!key) return fail(std::move(key).error().context(which));
  if (nonces.seen(r.nonce))
    return fail(Error(Errc::kExists, "replayed: its nonce " + r.nonce + " was honoured before (" + nonces.path() + ")")
                    .context(which));
  MLFX_ASSIGN(int64_t expires, request::parse_utc_seconds(r.expires_utc));
  if (auto st = nonces.record(r.nonce, r.request_id, expires, now); !st)
    return fail(std::move(st).error().context(which + ": its nonce cannot be recorded, so it could be replayed"));
  LabRequest out;
  out.request_id = r.request_id;
  out.device = r.device;
  out.target = r.target;
  out.pid = static_cast<pid_t>(r.pid);
  out.reason = r.reason;
  out.requester = r.requester;
  out.signer_fingerprint = (*key)->fingerprint();
  out.issued_utc = r.issued_utc;
  out.expires_utc = r.expires_utc;
  out.nonce = r.nonce;
  out.signed_request = s->text();
  return out;
}

Result<LabRequest> verify_lab_request(std::string_view text, const request::RequestPolicy& policy,
                                      NonceStore& nonces, int64_t now) {
  if (text.size() > request::kMaxSignedRequestSize)
    return fail(Errc::kBadFormat, "refused a capture request of " + std::to_string(text.size()) +
                                      " bytes: over the limit of " + std::to_string(request::kMaxSignedRequestSize));
  auto j = json::parse(text, "capture request");
  if (!j) return fail(std::move(j).error().context("refused a malformed capture request"));
  return verify_lab_request(*j, policy, nonces, now);
}

// ---- the poller ----

struct LabRequestPoller::State {
  IntakeTarget target;
  transport::TlsContext tls;
  std::string device_fingerprint;
  request::RequestPolicy policy;
  NonceStore nonces;

  // One session: rounds of REQUEST_POLL (acknowledging the last batch) and REQUESTS, until the
  // intake has no more, then a last acknowledgement.
  asio::awaitable<void> session(asio::io_context& io, Result<std::vector<Result<LabRequest>>>* out) {
    IntakeLink link(io, *tls, target, device_fingerprint);
    std::vector<Result<LabRequest>> results;
    Status st = co_await exchange_all(link, results);
    co_await link.close();
    if (!st && results.empty()) *out = fail(std::move(st).error());
    else *out = std::move(results);
  }

  asio::awaitable<Status> exchange_all(IntakeLink& link, std::vector<Result<LabRequest>>& results) {
    const std::string where = target.host + ":" + std::to_string(target.port);
    MLFX_CO_TRY(co_await link.connect());
    const auto& features = link.welcome().features;
    if (std::find(features.begin(), features.end(), wire::kCaptureRequestsFeature) == features.end())
      co_return fail(Errc::kUnsupported, "the intake " + where + " does not deliver capture requests (an mlfx serve "
                                         "older than them): upgrade it");
    if (link.welcome().device_id != policy.device_id)
      co_return fail(Errc::kUntrusted, "the intake knows this device by its certificate as '" +
                                           printable(link.welcome().device_id) + "', but this agent's device id is '" +
                                           policy.device_id + "': requests for one would be refused by the other; "
                                           "make [agent] device_id the certificate's id");
    std::vector<wire::RequestAck> acks;
    for (unsigned round = 0;; ++round) {
      wire::RequestPoll ask{round < kMaxRounds ? wire::kMaxRequestsPerFrame : 0, std::exchange(acks, {})};
      const json::Json body = wire::to_json(ask);
      MLFX_CO_ASSIGN(IntakeAnswer answer, co_await link.exchange(FrameType::kRequestPoll, body));
      if (answer.type != FrameType::kRequests)
        co_return fail(Errc::kBadFormat, std::string("the intake answered REQUEST_POLL with ") +
                                             wire::frame_type_name(answer.type));
      MLFX_CO_ASSIGN(wire::RequestBatch batch, wire::parse_requests(answer.body));
      if (ask.max == 0 || batch.requests.empty()) co_return Status{};
      for (const json::Json& item : batch.requests) {
        auto verified = verify_lab_request(item, policy, nonces, now_seconds());
        if (auto id = request_id_of(item)) {
          wire::RequestAck ack{*id, verified.has_value(), ""};
          if (!verified) ack.reason = ack_reason(verified.error().to_string());
          acks.push_back(std::move(ack));
        }
        results.push_back(std::move(verified));
      }
    }
  }

  // The request id of an item, when it has a readable one: what its acknowledgement names.
  static std::optional<std::string> request_id_of(const json::Json& item) {
    if (!item.is_object() || !item.contains("request") || !item["request"].is_object()) return std::nullopt;
    const json::Json& r = item["request"];
    if (!r.contains("request_id") || !r["request_id"].is_string()) return std::nullopt;
    const std::string id = r["request_id"].get<std::string>();
    return request::valid_id128(id) ? std::optional(id) : std::nullopt;
  }
};

LabRequestPoller::LabRequestPoller(std::unique_ptr<State> s) : s_(std::move(s)) {}
LabRequestPoller::LabRequestPoller(LabRequestPoller&&) noexcept = default;
LabRequestPoller& LabRequestPoller::operator=(LabRequestPoller&&) noexcept = default;
LabRequestPoller::~LabRequestPoller() = default;

const std::string& LabRequestPoller::nonce_store_path() const { return s_->nonces.path(); }

Result<LabRequestPoller> LabRequestPoller::create(const daemon::UploadSpec& upload, const daemon::LabRequestSpec& spec,
                                                  const std::string& device_id, const std::string& state_dir,
                                                  std::chrono::milliseconds timeout) {
  IntakeTarget target;
  MLFX_ASSIGN(HostPort hp, parse_host_port(upload.server, "[upload] server", false));
  target.host = hp.host;
  target.port = hp.port;
  target.tls = {upload.ca, upload.cert, upload.key, upload.crl.value_or("")};
  target.timeout = timeout;
  if (upload.intake_key) {
    if (upload.intake_key->starts_with("sha256:")) {
      target.intake_key_fingerprint = *upload.intake_key;
    } else {
      MLFX_ASSIGN(crypto::PublicKeyFile pub, crypto::load_public_key_file(*upload.intake_key));
      target.intake_key_fingerprint = pub.verify->fingerprint();
    }
  }
  MLFX_ASSIGN(crypto::SecretKeyFile key, crypto::load_secret_key_file(upload.key));
  if (key.kind != crypto::KeyKind::kDevice)
    return fail(Errc::kInvalidArgument, upload.key + " is a lab key, not this device's key");
  request::RequestPolicy policy;
  policy.device_id = device_id;
  policy.max_age = spec.max_age;
  if (spec.signers.empty())
    return fail(Errc::kInvalidArgument, "[lab_requests] names no signers: no request could be honoured");
  for (const std::string& path : spec.signers) {
    MLFX_ASSIGN(crypto::PublicKeyFile pub, crypto::load_public_key_file(path));
    policy.signers.push_back(*pub.verify);  // a lab .pub holds its Ed25519 key beside the X25519 one
  }
  MLFX_ASSIGN(transport::TlsContext tls, transport::make_client_context(target.tls));
  MLFX_ASSIGN(NonceStore nonces, NonceStore::open(state_dir, now_seconds()));
  auto state = std::make_unique<State>(State{std::move(target), std::move(tls), key.signing->public_key().fingerprint(),
                                             std::move(policy), std::move(nonces)});
  return LabRequestPoller(std::move(state));
}

Result<std::vector<Result<LabRequest>>> LabRequestPoller::poll() {
  Result<std::vector<Result<LabRequest>>> out = fail(Errc::kIo, "the session with the intake did not finish");
  asio::io_context io;
  asio::co_spawn(io, s_->session(io, &out), asio::detached);
  io.run();
  return out;
}

}  // namespace mlfx::agent
