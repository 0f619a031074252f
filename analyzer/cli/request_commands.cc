// mlfx request: capture requests from the lab to armed devices (protocol/doc/capture-request.md).
// `capture` signs one with a lab request key and queues it in the intake's store (or writes it
// to a file for `add` on the intake host, so the key need not live there); `list` shows the
// queue: pending, delivered (with what the device said), expired, refused.
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <memory>

#include "cli/command.h"
#include "intake/request_queue.h"
#include "mlfx/base/file.h"
#include "mlfx/base/host.h"
#include "mlfx/base/printable.h"
#include "mlfx/crypto/keys.h"
#include "mlfx/request/capture_request.h"

namespace mlfx::cli {
namespace {

struct CaptureArgs {
  std::string device, target, reason, key, requester, ttl = "5m", store, out;
  uint32_t pid = 0;
  bool json = false;
};

struct AddArgs {
  std::string store;
  std::vector<std::string> files;
  bool json = false;
};

struct ListArgs {
  std::string store, device;
  bool json = false;
};

// "300", "300s", "5m", "2h": a request's lifetime.
Result<std::chrono::seconds> parse_ttl(const std::string& text) {
  const auto bad = fail(Errc::kInvalidArgument, "--ttl '" + printable(text) + "' is not a duration such as 90s, 5m or 2h");
  size_t digits = 0;
  while (digits < text.size() && digits < 9 && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || text.size() - digits > 1) return bad;
  int64_t n = std::stoll(text.substr(0, digits));
  const char unit = digits < text.size() ? text[digits] : 's';
  if (unit == 'm') n *= 60;
  else if (unit == 'h') n *= 3600;
  else if (unit != 's') return bad;
  if (n <= 0 || n > request::kMaxLifetime.count())
    return fail(Errc::kInvalidArgument, "--ttl must be 1 s to " + std::to_string(request::kMaxLifetime.count() / 3600) +
                                            " h; a device also refuses a request older than its [lab_requests] max_age");
  return std::chrono::seconds(n);
}

std::string default_requester() {
  const HostIdentity host = local_host_identity();
  return (host.user.empty() ? std::string("uid ") + std::to_string(host.uid) : host.user) + "@" + host.hostname;
}

// The intake's store, as `mlfx serve --store` made it: a typo must not queue requests nobody delivers.
Result<intake::RequestQueue> open_store(const std::string& store) {
  if (::access((store + "/objects").c_str(), F_OK) != 0)
    return fail(Errc::kNotFound, store + " is not an intake store (no objects/): give the directory of "
                                         "'mlfx serve --store', where the intake has run at least once");
  return intake::RequestQueue::open(store);
}

std::string what_to_capture(const request::CaptureRequest& r) {
  return r.pid ? "pid " + std::to_string(r.pid) : "target " + r.target;
}

void print_request(const request::SignedCaptureRequest& s, const std::string& where, bool as_json) {
  const request::CaptureRequest& r = s.request;
  if (as_json) {
    std::printf("%s\n", printable_json({{"signed_request", request::to_json(s)}, {"path", where}}).c_str());
    return;
  }
  std::printf("request %s for device %s: capture %s\n", r.request_id.c_str(), r.device.c_str(),
              what_to_capture(r).c_str());
  std::printf("  reason:    %s\n  requester: %s\n  signed by: %s\n  issued %s, expires %s\n",
              printable(r.reason).c_str(), printable(r.requester).c_str(), s.signer.c_str(), r.issued_utc.c_str(),
              r.expires_utc.c_str());
  std::printf("%s\n", where.c_str());
}

int run_capture(const CaptureArgs& a) {
  const char* cmd = "request capture";
  auto ttl = parse_ttl(a.ttl);
  if (!ttl) return report_error(cmd, ttl.error());
  auto key = crypto::load_secret_key_file(a.key);
  if (!key) return report_error(cmd, key.error());
  if (key->kind == crypto::KeyKind::kLab)
    std::fprintf(stderr, "mlfx request capture: note: %s is a lab key, which also opens evidence; a key of its own "
                         "keeps that off the machines that sign requests (mlfx keys gen --kind request)\n",
                 a.key.c_str());
  auto r = request::make_capture_request(a.device, a.target, a.pid, a.reason,
                                         a.requester.empty() ? default_requester() : a.requester,
                                         static_cast<int64_t>(::time(nullptr)), *ttl);
  if (!r) return report_error(cmd, r.error());
  auto s = request::sign(*r, *key->signing);
  if (!s) return report_error(cmd, s.error());
  if (!a.out.empty()) {
    auto f = open_output(a.out, 0644);
    if (!f) return report_error(cmd, f.error());
    if (auto st = f->write_all(as_bytes(s->text() + "\n")); !st) return report_error(cmd, st.error());
    if (auto st = f->close(); !st) return report_error(cmd, st.error());
    print_request(*s, a.out == "-" ? "written to standard output" :
                                     "written to " + a.out + ": queue it on the intake host with 'mlfx request add'",
                  a.json);
    return 0;
  }
  auto queue = open_store(a.store);
  if (!queue) return report_error(cmd, queue.error());
  auto path = queue->enqueue(*s);
  if (!path) return report_error(cmd, path.error());
  print_request(*s, "queued: " + *path + " (the intake hands it to " + r->device + " when the device next asks)",
                a.json);
  return 0;
}

int run_add(const AddArgs& a) {
  const char* cmd = "request add";
  auto queue = open_store(a.store);
  if (!queue) return report_error(cmd, queue.error());
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  for (const std::string& file : a.files) {
    auto text = read_small_file(file, request::kMaxSignedRequestSize + 1);  // + its newline
    if (!text) return report_error(cmd, std::move(text).error().context(file));
    auto s = request::parse_signed_request(text->ends_with("\n") ? text->substr(0, text->size() - 1) : *text);
    if (!s) return report_error(cmd, std::move(s).error().context(file));
    auto expires = request::parse_utc_seconds(s->request.expires_utc);
    if (!expires || *expires <= now)
      return report_error(cmd, Error(Errc::kInvalidArgument, file + ": the request expired at " +
                                                                 s->request.expires_utc + "; sign a new one"));
    auto path = queue->enqueue(*s);
    if (!path) return report_error(cmd, std::move(path).error().context(file));
    print_request(*s, "queued: " + *path, a.json);
  }
  return 0;
}

int run_list(const ListArgs& a) {
  auto queue = open_store(a.store);
  if (!queue) return report_error("request list", queue.error());
  auto all = queue->list(a.device);
  if (!all) return report_error("request list", all.error());
  if (a.json) {
    json::Json list = json::Json::array();
    for (const auto& q : *all) list.push_back(q.to_json());
    std::printf("%s\n", printable_json({{"requests", list}}, 2).c_str());
    return 0;
  }
  if (all->empty()) std::printf("no capture requests in %s\n", queue->dir().c_str());
  for (const auto& q : *all) {
    if (!q.signed_request) {
      std::printf("%-9s %s/%s: %s\n", q.state.c_str(), printable(q.device).c_str(), printable(q.name).c_str(),
                  printable(q.problem).c_str());
      continue;
    }
    const request::CaptureRequest& r = q.signed_request->request;
    std::printf("%-9s %s %s: capture %s, issued %s, expires %s, by %s: %s\n", q.state.c_str(), r.request_id.c_str(),
                r.device.c_str(), what_to_capture(r).c_str(), r.issued_utc.c_str(), r.expires_utc.c_str(),
                printable(r.requester).c_str(), printable(r.reason).c_str());
    if (q.delivery)
      std::printf("          delivered %s to %s (certificate %s); the device %s%s\n",
                  printable(q.delivery->value("delivered_utc", "")).c_str(),
                  printable(q.delivery->value("peer", "")).c_str(),
                  printable(q.delivery->value("certificate_serial", "")).c_str(),
                  printable(q.delivery->value("device_result", "")).c_str(),
                  q.delivery->contains("device_reason")
                      ? (" it: " + printable(q.delivery->value("device_reason", ""))).c_str()
                      : " it");
  }
  return 0;
}

}  // namespace

void add_request_commands(CLI::App& app, Registry& registry) {
  auto* req = app.add_subcommand("request", "capture requests from the lab to armed devices")->require_subcommand(1);

  auto c = std::make_shared<CaptureArgs>();
  auto* capture = req->add_subcommand(
      "capture", "sign a capture request for one device and queue it in the intake's store (or write it with --out)");
  capture->add_option("--device", c->device, "the device id, as in its certificate")->required();
  auto* target = capture->add_option("--target", c->target, "a target name of the device's configuration");
  auto* pid = capture->add_option("--pid", c->pid, "a process id on the device")->check(CLI::Range(1u, request::kMaxPid));
  target->excludes(pid);
  capture->add_option("--reason", c->reason, "why: recorded in the capture's custody log")->required();
  capture->add_option("--key", c->key, "the lab request key that signs it (mlfx keys gen --kind request)")->required();
  capture->add_option("--requester", c->requester, "who asks (default: USER@HOST)");
  capture->add_option("--ttl", c->ttl, "how long the request is valid, e.g. 90s, 5m, 2h (default 5m, at most 24h)");
  auto* store = capture->add_option("--store", c->store, "the intake's store directory (mlfx serve --store)");
  auto* out = capture->add_option("--out", c->out, "write the signed request to this file (- for standard output) "
                                                   "instead, for 'mlfx request add' on the intake host");
  store->excludes(out);
  capture->add_flag("--json", c->json, "print the signed request as JSON");
  registry.add(capture, [c] {
    if (c->target.empty() == (c->pid == 0)) {
      std::fprintf(stderr, "mlfx request capture: give --target NAME or --pid PID (see --help)\n");
      return kExitUsage;
    }
    if (c->store.empty() == c->out.empty()) {
      std::fprintf(stderr, "mlfx request capture: give --store DIR (the intake's store) or --out FILE\n");
      return kExitUsage;
    }
    return run_capture(*c);
  });

  auto ad = std::make_shared<AddArgs>();
  auto* add = req->add_subcommand("add", "queue signed requests (from 'mlfx request capture --out') in the intake's store");
  add->add_option("--store", ad->store, "the intake's store directory (mlfx serve --store)")->required();
  add->add_option("files", ad->files, "signed request files")->required();
  add->add_flag("--json", ad->json, "print each request as JSON");
  registry.add(add, [ad] { return run_add(*ad); });

  auto l = std::make_shared<ListArgs>();
  auto* list = req->add_subcommand("list", "the intake's capture requests: pending, delivered, expired, refused");
  list->add_option("--store", l->store, "the intake's store directory (mlfx serve --store)")->required();
  list->add_option("--device", l->device, "only this device's");
  list->add_flag("--json", l->json, "JSON output");
  registry.add(list, [l] { return run_list(*l); });
}

}  // namespace mlfx::cli
