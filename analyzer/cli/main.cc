// mlfx: the lab-side command line. Only this file turns errors into exit codes:
// 0 success, 1 failure (the message says what failed), 2 usage error, 3 `recover` found no
// model (report.json is still written), 4 `recover` stopped at --memory-limit/--time-limit
// (partial results, report.json says where), 5 `bundle verify`: intact but identity unverified (no
// trust store binds the signing key to the manifest's device id).
// Every string that comes from evidence is printed through printable() / printable_json().
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mutex>
#include <thread>

#include <cstdio>
#include <iostream>
#include <optional>

#include <CLI/CLI.hpp>

#include "evidence/bundle_check.h"
#include "intake/intake_server.h"
#include "cli/investigate_commands.h"
#include "recovery/recover.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
#include "mlfx/base/host.h"
#include "mlfx/base/json.h"
#include "mlfx/base/printable.h"
#include "mlfx/base/secure_memory.h"
#include "mlfx/base/version.h"
#include "mlfx/bundle/sealing_keys.h"
#include "mlfx/bundle/writer.h"
#include "mlfx/pki/lab_ca.h"

namespace mlfx {
namespace {

constexpr int kExitNoModels = 3;
constexpr int kExitPartial = 4;  // recover stopped at --memory-limit/--time-limit: results are partial
constexpr int kExitIdentityUnverified = 5;

// Error messages quote names read from evidence.
int report_error(const Error& e) {
  std::fprintf(stderr, "mlfx: error: %s\n", printable(e.to_string()).c_str());
  return 1;
}

// ---- keys ----

struct KeysGenArgs {
  std::string kind, out;
};

int run_keys_gen(const KeysGenArgs& a) {
  crypto::KeyKind kind = a.kind == "lab" ? crypto::KeyKind::kLab : crypto::KeyKind::kDevice;
  if (auto st = crypto::generate_key_files(kind, a.out); !st) return report_error(st.error());
  auto pub = crypto::load_public_key_file(a.out + ".pub");
  if (!pub) return report_error(pub.error());
  std::printf("wrote %s.key (private, mode 0600) and %s.pub\n", a.out.c_str(), a.out.c_str());
  if (pub->box) std::printf("recipient key: %s\n", pub->box->fingerprint().c_str());
  std::printf("signing key:   %s\n", pub->verify->fingerprint().c_str());
  return 0;
}

// ---- ca ----

struct CaArgs {
  std::string dir, out, name, device, key, id, names, cert, serial, reason;
  int days = 0;
  bool server = false, json = false;
};

void print_entry(const pki::IndexEntry& e) {
  std::printf("%s  %-6s  %-8s  %s  %s .. %s  %s\n", e.serial.c_str(), pki::cert_kind_name(e.kind),
              e.revoked_utc ? "revoked" : "valid", e.key_fingerprint.c_str(), e.not_before.c_str(),
              e.not_after.c_str(), e.id.c_str());
}

int run_ca_init(const CaArgs& a) {
  pki::CaInitOptions o;
  o.dir = a.out;
  if (!a.name.empty()) o.name = a.name;
  if (a.days) o.days = a.days;
  if (auto st = pki::init_ca(o); !st) return report_error(st.error());
  std::printf("wrote %s/ca.key (private, mode 0600), %s/ca.pem, %s/crl.pem and %s/index.jsonl\n",
              a.out.c_str(), a.out.c_str(), a.out.c_str(), a.out.c_str());
  auto pem = read_small_file(a.out + "/ca.pem", 64 * 1024);
  if (pem) {
    if (auto fp = pki::certificate_key_fingerprint(*pem)) std::printf("CA key: %s\n", fp->c_str());
  }
  return 0;
}

int run_ca_issue(const CaArgs& a) {
  pki::IssueOptions o;
  o.out = a.out;
  if (a.days) o.days = a.days;
  if (a.server) {
    o.kind = pki::CertKind::kServer;
    o.public_key_path = a.key;
    for (size_t pos = 0; pos <= a.names.size();) {
      size_t comma = a.names.find(',', pos);
      if (comma == std::string::npos) comma = a.names.size();
      o.names.push_back(a.names.substr(pos, comma - pos));
      pos = comma + 1;
    }
  } else {
    o.kind = pki::CertKind::kDevice;
    o.public_key_path = a.device;
    o.id = a.id;
  }
  auto e = pki::issue_certificate(a.dir, o);
  if (!e) return report_error(e.error());
  std::printf("wrote %s: %s certificate for %s, serial %s, valid until %s\n", a.out.c_str(),
              pki::cert_kind_name(e->kind), e->id.c_str(), e->serial.c_str(), e->not_after.c_str());
  std::printf("key: %s\n", e->key_fingerprint.c_str());
  return 0;
}

int run_ca_revoke(const CaArgs& a) {
  pki::RevokeTarget t;
  if (!a.serial.empty()) t.serial = a.serial;
  if (!a.cert.empty()) {
    auto pem = read_small_file(a.cert, 1024 * 1024);
    if (!pem) return report_error(pem.error());
    t.certificate_pem = *pem;
  }
  auto e = pki::revoke_certificate(a.dir, t, a.reason);
  if (!e) return report_error(e.error());
  std::printf("revoked serial %s (%s %s); wrote %s/crl.pem\n", e->serial.c_str(),
              pki::cert_kind_name(e->kind), e->id.c_str(), a.dir.c_str());
  return 0;
}

int run_ca_crl(const CaArgs& a) {
  if (auto st = pki::refresh_crl(a.dir); !st) return report_error(st.error());
  std::printf("wrote %s/crl.pem (next update in %d days)\n", a.dir.c_str(), pki::kCrlDays);
  return 0;
}

int run_ca_list(const CaArgs& a) {
  auto entries = pki::list_certificates(a.dir);
  if (!entries) return report_error(entries.error());
  if (a.json) {
    json::Json arr = json::Json::array();
    for (const auto& e : *entries) {
      arr.push_back({{"serial", e.serial}, {"kind", pki::cert_kind_name(e.kind)}, {"id", e.id},
                     {"key_fingerprint", e.key_fingerprint}, {"not_before", e.not_before},
                     {"not_after", e.not_after},
                     {"revoked_utc", e.revoked_utc ? json::Json(*e.revoked_utc) : json::Json()},
                     {"reason", e.reason ? json::Json(*e.reason) : json::Json()}});
    }
    std::printf("%s\n", arr.dump(2).c_str());
    return 0;
  }
  if (entries->empty()) std::printf("no certificates issued\n");
  for (const auto& e : *entries) print_entry(e);
  return 0;
}

// ---- bundle seal ----

struct SealArgs {
  std::vector<std::string> inputs, names, recipients;
  std::string out, device_key, case_id, note, device_id;
  uint32_t chunk_size = bundle::kDefaultChunkSize;
  bool legacy_hashes = false, quiet = false;
};

std::string default_stream_name(const std::string& input) {
  if (input == "-") return "stdin";
  auto slash = input.find_last_of('/');
  return slash == std::string::npos ? input : input.substr(slash + 1);
}

Result<bundle::Manifest> seal(const SealArgs& a) {
  MLFX_ASSIGN(bundle::SealingKeys keys, bundle::load_sealing_keys(a.device_key, a.recipients));
  if (!a.names.empty() && a.names.size() != a.inputs.size())
    return fail(Errc::kInvalidArgument, "--name given " + std::to_string(a.names.size()) +
                                            " times for " + std::to_string(a.inputs.size()) + " inputs");
  if (std::count(a.inputs.begin(), a.inputs.end(), "-") > 1)
    return fail(Errc::kInvalidArgument, "standard input ('-') can be sealed only once");
  // Open every input first so that a typo fails before anything is written.
  std::vector<File> files;
  json::Json inputs = json::Json::array();
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    if (a.inputs[i] == "-") {
      files.push_back(File::standard_input());
    } else {
      MLFX_ASSIGN(File f, File::open_read(a.inputs[i]));
      files.push_back(std::move(f));
    }
    inputs.push_back({{"path", a.inputs[i]}, {"stream", a.names.empty() ? default_stream_name(a.inputs[i]) : a.names[i]}});
  }

  bundle::SealParams p;
  p.chunk_size = a.chunk_size;
  p.case_id = a.case_id;
  p.note = a.note;
  p.device_id = a.device_id;
  p.command = "bundle seal";
  p.legacy_hashes = a.legacy_hashes;
  p.tool_parameters = {{"inputs", inputs}, {"chunk_size", a.chunk_size}, {"legacy_hashes", a.legacy_hashes},
                       {"recipients", a.recipients}, {"case_id", a.case_id}};
  MLFX_ASSIGN(File out, File::create_new(a.out, 0640));
  // From here on a failure removes the incomplete bundle.
  struct Cleanup {
    std::string path;
    bool keep = false;
    ~Cleanup() {
      if (!keep) unlink(path.c_str());
    }
  } cleanup{a.out};
  MLFX_ASSIGN(bundle::BundleWriter w, bundle::BundleWriter::create(std::move(out), *keys.device.signing,
                                                                 keys.recipients, p));
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string name = inputs[i]["stream"];
    MLFX_TRY(w.begin_stream(name, a.inputs[i] == "-" ? "stdin" : a.inputs[i]));
    uint64_t total = 0;
    struct stat st;
    if (fstat(files[i].fd(), &st) == 0 && S_ISREG(st.st_mode)) total = static_cast<uint64_t>(st.st_size);
    std::optional<Progress> bar;
    if (!a.quiet) bar.emplace("sealing " + name, total);
    if (auto r = w.write_from(files[i], bar ? &*bar : nullptr); !r)
      return fail(std::move(r).error().context("stream " + name));
    if (bar) bar->finish();
    MLFX_TRY(w.end_stream());
  }
  MLFX_ASSIGN(bundle::Manifest m, w.finish());
  cleanup.keep = true;
  return m;
}

int run_seal(const SealArgs& a) {
  auto m = seal(a);
  if (!m) return report_error(m.error());
  std::printf("sealed %s: bundle %s, %zu stream(s), %zu recipient(s)\n", a.out.c_str(),
              m->bundle_id_hex().c_str(), m->streams.size(), m->recipients.size());
  for (const auto& s : m->streams)
    std::printf("  %-20s %14llu bytes  sha256 %s\n", s.name.c_str(),
                static_cast<unsigned long long>(s.size), s.sha256.c_str());
  return 0;
}

// ---- bundle verify / open / info ----

struct VerifyArgs {
  std::string file, trusted;
  bool json = false, quiet = false;
};

int run_verify(const VerifyArgs& a) {
  evidence::VerifyReport r =
      evidence::verify_bundle(a.file, {a.trusted, !a.quiet && !a.json});
  const evidence::Verdict v = r.verdict();
  if (a.json) {
    std::cout << printable_json(r.to_json(), 2) << "\n";
  } else {
    for (const auto& l : r.lines)
      std::printf("%-14s %-7s  %s\n", l.check.c_str(), l.ok() ? "ok" : evidence::outcome_name(l.outcome), printable(l.detail).c_str());
    if (r.incomplete_capture) std::printf("%-14s %-7s  %s\n", "capture", "PARTIAL", printable(*r.incomplete_capture).c_str());
    std::printf("%s: %s%s\n", printable(a.file).c_str(), evidence::verdict_words(v),
                r.incomplete_capture ? " (of an INCOMPLETE capture)" : "");
  }
  return v == evidence::Verdict::kAttributed ? 0 : v == evidence::Verdict::kIdentityUnverified ? kExitIdentityUnverified : 1;
}

// open and recover go on with an unattributed bundle, and say so.
void warn_unverified(const char* command, const evidence::VerifyReport& r) {
  if (r.incomplete_capture) std::fprintf(stderr, "mlfx %s: warning: %s\n", command, printable(*r.incomplete_capture).c_str());
  if (r.verdict() != evidence::Verdict::kIdentityUnverified) return;
  for (const auto& l : r.lines)
    if (l.check == "device") std::fprintf(stderr, "mlfx %s: warning: %s\n", command, printable(l.detail).c_str());
}

struct OpenArgs {
  std::string file, key, out, trusted;
  bool quiet = false;
};

int run_open(const OpenArgs& a) {
  auto lab = crypto::load_secret_key_file(a.key);
  if (!lab) return report_error(lab.error());
  auto r = evidence::open_bundle(a.file, *lab, a.out, {a.trusted, !a.quiet});
  if (!r) return report_error(std::move(r).error().context("opening " + a.file));
  warn_unverified("bundle open", r->report);
  std::printf("opened %s (%s) into %s:\n", printable(a.file).c_str(), evidence::verdict_words(r->report.verdict()), printable(a.out).c_str());
  for (const auto& f : r->files) std::printf("  %s\n", printable(f).c_str());
  std::printf("check with: (cd %s && sha256sum -c SHA256SUMS)\n", a.out.c_str());
  return 0;
}

struct InfoArgs {
  std::string file;
  bool json = false;
};

int run_info(const InfoArgs& a) {
  auto r = bundle::BundleReader::open(a.file);
  if (!r) return report_error(r.error());
  const bundle::Manifest& m = r->manifest();
  auto digest = r->digest();
  if (!digest) return report_error(digest.error());
  if (a.json) {
    json::Json j = {{"file", a.file}, {"file_size", r->file_size()}, {"bundle_digest", *digest},
                    {"manifest", m.to_json()}, {"custody", r->custody().events()}};
    std::cout << printable_json(j, 2) << "\n";
    return 0;
  }
  std::printf("bundle      %s (%llu bytes, format %u.%u)\n", m.bundle_id_hex().c_str(),
              static_cast<unsigned long long>(r->file_size()), m.format_major, m.format_minor);
  std::printf("digest      %s\n", digest->c_str());
  std::printf("case        %s\nnote        %s\n", printable(m.case_id).c_str(), printable(m.note).c_str());
  std::printf("device      %s (host %s) key %s (claimed by the manifest)\n", printable(m.device.id).c_str(), printable(m.device.hostname).c_str(),
              printable(m.device.key_fingerprint).c_str());
  std::printf("tool        %s %s, %s\n", printable(m.tool.name).c_str(), printable(m.tool.version).c_str(), printable(m.tool.command).c_str());
  std::printf("created     %s\nsealed      %s\n", printable(m.created_utc).c_str(), printable(m.sealed_utc).c_str());
  if (auto partial = evidence::incomplete_capture(m)) std::printf("capture     %s\n", printable(*partial).c_str());
  for (const auto& rc : m.recipients) std::printf("recipient   %s\n", printable(rc.recipient_fingerprint).c_str());
  for (const auto& s : m.streams)
    std::printf("stream      %s: %llu bytes, %llu chunks, sha256 %s\n", printable(s.name).c_str(),
                static_cast<unsigned long long>(s.size), static_cast<unsigned long long>(s.chunks),
                s.sha256.c_str());
  for (const auto& ev : r->custody().events()) {
    const json::Json actor = ev.value("actor", json::Json::object());
    std::printf("custody     %s %s by %s\n", printable(ev.value("utc", "?")).c_str(), printable(ev.value("type", "?")).c_str(),
                printable(actor.is_object() ? actor.value("key_fingerprint", "?") : "?").c_str());
  }
  std::printf("(structure only; run 'mlfx bundle verify' to check signatures and every chunk)\n");
  return 0;
}

// ---- recover ----

int run_recover(const recovery::RecoverOptions& o, bool json_out) {
  auto r = recovery::recover(o);
  if (!r) return report_error(r.error());
  const json::Json& verification = (*r)["input"].value("verification", json::Json::object());
  if (verification.value("verdict", "") == evidence::verdict_name(evidence::Verdict::kIdentityUnverified))
    std::fprintf(stderr, "mlfx recover: warning: %s: the bundle is intact but its signer's identity is unverified "
                         "(no --trusted-devices); see input.verification in report.json\n",
                 evidence::verdict_words(evidence::Verdict::kIdentityUnverified));
  if (verification.contains("capture_incomplete") && verification["capture_incomplete"].is_string())
    std::fprintf(stderr, "mlfx recover: warning: %s\n", printable(verification["capture_incomplete"].get<std::string>()).c_str());
  const bool partial = !(*r)["limits"]["exhausted"].is_null();
  const int done = (*r)["models"].empty() ? kExitNoModels : partial ? kExitPartial : 0;
  if (json_out) {
    std::cout << printable_json(*r, 2) << "\n";
    return done;
  }
  const auto& py = (*r)["python"];
  std::printf("process %s (pid %s), CPython %s, %s tracked objects, %s modules\n",
              printable((*r)["process"]["command"].get<std::string>()).c_str(),
              (*r)["process"]["pid"].dump().c_str(), printable(py["version"].get<std::string>()).c_str(),
              py["gc_objects"].dump().c_str(), (*r)["torch"]["modules"].dump().c_str());
  for (const auto& m : (*r)["models"])
    std::printf("  %-28s %-40s %6s tensors %12s parameters%s\n", printable(m["directory"].get<std::string>()).c_str(),
                printable(m["class"].get<std::string>()).c_str(), m["tensors"].dump().c_str(),
                m["parameters"].dump().c_str(), m["complete"].get<bool>() ? "" : "  INCOMPLETE");
  for (const auto& f : (*r)["findings"])
    std::printf("finding (%s): %s\n", printable(f["severity"].get<std::string>()).c_str(),
                printable(f["summary"].get<std::string>()).c_str());
  size_t warnings = (*r)["diagnostics"]["warnings"].size();
  if (warnings) std::printf("%zu diagnostic(s): see %s/report.json\n", warnings, o.out_dir.c_str());
  if (partial)
    std::fprintf(stderr, "mlfx: analysis stopped early: %s; the results are partial (rerun with a larger "
                         "--memory-limit or --time-limit to go further)\n",
                 printable((*r)["limits"]["exhausted"].get<std::string>()).c_str());
  std::printf("wrote %s/report.json\n", o.out_dir.c_str());
  if ((*r)["models"].empty()) {
    std::fprintf(stderr, "mlfx: no model found: %s\n",
                 (*r)["torch"]["loaded"].get<bool>() ? "torch is loaded but no nn.Module is alive in this process"
                                                     : "torch is not imported in this process");
    return kExitNoModels;
  }
  return done;
}

// ---- serve ----

struct ServeArgs {
  std::string listen = "127.0.0.1:7443", store, ca_dir, ca, crl, cert, key, name, port_file;
  uint64_t max_bundle = uint64_t(1) << 40;
  size_t max_partials = 8, max_connections = 256, max_sessions_per_device = 4;
  size_t max_handshakes = 256, max_handshakes_per_address = 32;
  uint64_t upload_memory = uint64_t(2) << 30, max_reserved = uint64_t(1) << 40,
           max_reserved_per_device = uint64_t(256) << 30, device_quota = 0;
  double idle_timeout_s = 60, handshake_timeout_s = 5, partial_ttl_s = 7 * 24 * 3600;
  unsigned threads = 0;
};

Result<std::pair<std::string, uint16_t>> split_host_port(const std::string& s) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return fail(Errc::kInvalidArgument, "--listen wants ADDRESS:PORT, e.g. 0.0.0.0:7443, not '" + s + "'");
  std::string host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  char* end = nullptr;
  unsigned long port = std::strtoul(s.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port > 65535 || colon + 1 == s.size())
    return fail(Errc::kInvalidArgument, "--listen: '" + s.substr(colon + 1) + "' is not a port number");
  return std::make_pair(host, static_cast<uint16_t>(port));
}

int run_serve(const ServeArgs& a) {
  intake::ServerOptions opt;
  auto hp = split_host_port(a.listen);
  if (!hp) return report_error(hp.error());
  opt.host = hp->first;
  opt.port = hp->second;
  opt.tls.ca = !a.ca.empty() ? a.ca : a.ca_dir + "/ca.pem";
  opt.tls.crl = !a.crl.empty() ? a.crl : a.ca_dir.empty() ? "" : a.ca_dir + "/crl.pem";
  opt.tls.cert = a.cert;
  opt.tls.key = a.key;
  opt.idle_timeout = std::chrono::milliseconds(static_cast<int64_t>(a.idle_timeout_s * 1000));
  opt.handshake_timeout = std::chrono::milliseconds(static_cast<int64_t>(a.handshake_timeout_s * 1000));
  opt.max_connections = a.max_connections;
  opt.max_sessions_per_device = a.max_sessions_per_device;
  opt.max_handshakes = a.max_handshakes;
  opt.max_handshakes_per_address = a.max_handshakes_per_address;
  opt.upload_memory = a.upload_memory;
  opt.threads = a.threads;
  if (opt.tls.crl.empty())
    std::fprintf(stderr, "mlfx serve: warning: no CRL (--crl or --ca-dir): revoked devices are not refused\n");

  auto key_file = crypto::load_secret_key_file(a.key);
  if (!key_file) return report_error(key_file.error());
  if (key_file->kind != crypto::KeyKind::kDevice || !key_file->signing)
    return report_error(Error(Errc::kInvalidArgument, a.key + " is a lab key; the intake signs receipts with a "
                                                          "device-kind key (mlfx keys gen --kind device)"));
  HostIdentity host = local_host_identity();
  custody::Actor actor{"intake", a.name.empty() ? host.hostname : a.name, host.hostname, host.user};
  intake::StoreLimits limits{a.max_bundle, a.max_partials, a.max_reserved, a.max_reserved_per_device, a.device_quota,
                             std::chrono::seconds(static_cast<int64_t>(a.partial_ttl_s))};
  auto store = intake::EvidenceStore::open(a.store, *key_file->signing, actor, limits);
  if (!store) return report_error(store.error());

  std::mutex log_mu;
  intake::EventLog log = [&](const json::Json& event) {
    json::Json line = event;
    line["time"] = utc_timestamp();
    std::lock_guard lock(log_mu);
    std::fprintf(stderr, "%s\n", printable_json(line).c_str());
    std::fflush(stderr);
  };
  // SIGINT/SIGTERM end the server; blocked here so that only the waiting thread takes them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = intake::IntakeServer::create(opt, **store, log);
  if (!server) return report_error(server.error());
  const std::string address = opt.host + ":" + std::to_string((*server)->port());
  if (!a.port_file.empty())
    if (auto st = replace_file(a.port_file, std::to_string((*server)->port()) + "\n", 0644); !st)
      return report_error(st.error());
  log({{"event", "listening"}, {"address", address}, {"store", a.store},
       {"intake_key_fingerprint", (*store)->intake_key().fingerprint()}});
  std::thread stopper([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    log({{"event", "stopping"}, {"signal", sig}});
    (*server)->stop();
  });
  (*server)->run();
  // The server stops only on a signal; let the waiting thread finish.
  stopper.join();
  return 0;
}

}  // namespace
}  // namespace mlfx

int main(int argc, char** argv) {
  using namespace mlfx;
  // Keys and decrypted evidence stay out of core dumps, swap and other processes of this user.
  if (auto st = protect_process(); !st)
    std::fprintf(stderr, "mlfx: warning: %s\n", st.error().to_string().c_str());
  CLI::App app{"mlfx: verify, open and analyse sealed memory evidence of ML processes"};
  app.set_version_flag("--version", std::string("mlfx ") + kToolVersion);
  app.require_subcommand(1);

  auto* keys = app.add_subcommand("keys", "manage device and lab keys")->require_subcommand(1);
  KeysGenArgs kg;
  auto* gen = keys->add_subcommand("gen", "generate a key pair: PREFIX.key (0600) and PREFIX.pub");
  gen->add_option("--kind", kg.kind, "device (signs evidence) or lab (receives evidence)")
      ->required()->check(CLI::IsMember({"device", "lab"}));
  gen->add_option("--out", kg.out, "output prefix")->required();

  CaArgs ca_args;
  auto* ca = app.add_subcommand("ca", "the lab certificate authority for the intake's mutual TLS")
                 ->require_subcommand(1);
  auto* ca_init = ca->add_subcommand("init", "create a CA: DIR/ca.key (0600), ca.pem, crl.pem, index.jsonl");
  ca_init->add_option("--out", ca_args.out, "CA directory (new or empty)")->required();
  ca_init->add_option("--name", ca_args.name, "CA subject common name (default: mlfx lab CA)");
  ca_init->add_option("--days", ca_args.days, "validity in days (default 3650)")->check(CLI::Range(1, 36500));
  auto* ca_issue = ca->add_subcommand("issue", "issue a device (client) or intake (server) certificate");
  ca_issue->add_option("--ca", ca_args.dir, "CA directory")->required();
  auto* ca_kind = ca_issue->add_option_group("kind", "--device with --id, or --server with --key and --name");
  auto* opt_device = ca_kind->add_option("--device", ca_args.device, "device .pub from 'mlfx keys gen --kind device'");
  auto* opt_server = ca_kind->add_flag("--server", ca_args.server, "an intake (server auth) certificate");
  ca_kind->require_option(1);
  auto* opt_id = ca_issue->add_option("--id", ca_args.id, "device id (subject CN and URI SAN mlfx:device:ID)");
  auto* opt_key = ca_issue->add_option("--key", ca_args.key, "intake .pub (a device-kind key: it also signs receipts)");
  auto* opt_names = ca_issue->add_option("--name", ca_args.names,
                                         "intake DNS names and IP addresses, comma-separated");
  opt_id->needs(opt_device)->excludes(opt_server);
  opt_key->needs(opt_server)->excludes(opt_device);
  opt_names->needs(opt_server)->excludes(opt_device);
  opt_device->needs(opt_id);
  opt_server->needs(opt_key)->needs(opt_names);
  ca_issue->add_option("--days", ca_args.days, "validity in days (default 365)")->check(CLI::Range(1, 36500));
  ca_issue->add_option("--out", ca_args.out, "certificate to create (must not exist)")->required();
  auto* ca_revoke = ca->add_subcommand("revoke", "revoke a certificate and publish a new DIR/crl.pem");
  ca_revoke->add_option("--ca", ca_args.dir, "CA directory")->required();
  auto* ca_which = ca_revoke->add_option_group("which", "--cert or --serial");
  ca_which->add_option("--cert", ca_args.cert, "the certificate (PEM)");
  ca_which->add_option("--serial", ca_args.serial, "its serial number (hex)");
  ca_which->require_option(1);
  ca_revoke->add_option("--reason", ca_args.reason,
                        "free text; an RFC 5280 name (keyCompromise, superseded, ...) also goes into the CRL");
  auto* ca_crl = ca->add_subcommand("crl", "re-sign DIR/crl.pem with a new number (due every 30 days)");
  ca_crl->add_option("--ca", ca_args.dir, "CA directory")->required();
  auto* ca_list = ca->add_subcommand("list", "list issued certificates");
  ca_list->add_option("--ca", ca_args.dir, "CA directory")->required();
  ca_list->add_flag("--json", ca_args.json, "print as JSON");

  auto* bundle = app.add_subcommand("bundle", "seal, verify, open and inspect evidence bundles")
                     ->require_subcommand(1);
  SealArgs sa;
  auto* seal = bundle->add_subcommand("seal", "seal files (or - for stdin) into a new bundle, one stream each");
  seal->add_option("files", sa.inputs, "input files, '-' for standard input")->required();
  seal->add_option("--out", sa.out, "bundle to create (must not exist)")->required();
  seal->add_option("--device-key", sa.device_key, "device private key that signs")->required();
  seal->add_option("--recipient", sa.recipients, "lab public key to encrypt to (repeatable)")->required();
  seal->add_option("--case", sa.case_id, "case identifier");
  seal->add_option("--note", sa.note, "operator note");
  seal->add_option("--device-id", sa.device_id, "device name recorded in the manifest (default: host name)");
  seal->add_option("--name", sa.names, "stream name for each input, in order (default: file name)");
  seal->add_option("--chunk-size", sa.chunk_size, "plaintext bytes per chunk")
      ->check(CLI::Range(bundle::kMinChunkSize, bundle::kMaxChunkSize));
  seal->add_flag("--legacy-hashes", sa.legacy_hashes, "also record MD5 and SHA-1 of each stream");
  seal->add_flag("-q,--quiet", sa.quiet, "no progress bar");

  VerifyArgs va;
  auto* verify = bundle->add_subcommand("verify", "check structure, signatures, every chunk and the custody chain (no lab key needed)");
  verify->add_option("file", va.file, "bundle")->required();
  verify->add_option("--trusted-devices", va.trusted, cli::kTrustedDevicesHelp);
  verify->add_flag("--json", va.json, "print the report as JSON");
  verify->add_flag("-q,--quiet", va.quiet, "no progress bar");

  OpenArgs oa;
  auto* open = bundle->add_subcommand("open", "verify, decrypt and write the streams as plain files with SHA256SUMS");
  open->add_option("file", oa.file, "bundle")->required();
  open->add_option("--key", oa.key, "lab private key")->required();
  open->add_option("--out", oa.out, "output directory (new or empty)")->required();
  open->add_option("--trusted-devices", oa.trusted, cli::kTrustedDevicesHelp);
  open->add_flag("-q,--quiet", oa.quiet, "no progress bar");

  InfoArgs ia;
  auto* info = bundle->add_subcommand("info", "show the manifest and custody log (structure checks only)");
  info->add_option("file", ia.file, "bundle")->required();
  info->add_flag("--json", ia.json, "print as JSON");

  recovery::RecoverOptions ro;
  bool recover_json = false, recover_quiet = false;
  auto* recover = app.add_subcommand("recover", "recover every model in a captured process (ELF core or bundle) "
                                                "or in a live one (--pid)");
  auto* recover_source = recover->add_option_group("source", "what to recover from: exactly one");
  recover_source->add_option("input", ro.input, "ELF core, or mlfx bundle with a 'core' stream");
  recover_source->add_option("--pid", ro.pid,
                             "a live process instead: frozen while its memory is read into an "
                             "in-memory core, then released and analysed")
      ->check(CLI::PositiveNumber);
  recover_source->require_option(1);
  recover->add_option("--out", ro.out_dir, "output directory (new or empty)")->required();
  recover->add_option("--key", ro.lab_key, "lab private key (for bundles)");
  recover->add_option("--trusted-devices", ro.trusted_devices_dir, cli::kTrustedDevicesHelp);
  recover->add_option("--sysroot", ro.sysroot,
                      "read file-backed memory the core left out (gcore and kernel cores skip read-only "
                      "file data) from DIR + the mapped path, like gdb's sysroot; '/' on the captured host");
  recover->add_flag("--json", recover_json, "print the report as JSON");
  recover->add_flag("-q,--quiet", recover_quiet, "no progress bar");
  uint64_t recover_memory_mib = ro.limits.memory_bytes >> 20;
  recover->add_option("--memory-limit", recover_memory_mib,
                      "MiB the analysis may keep (decoded names, modules, walks; not the image nor the "
                      "exported tensors); past it recovery stops with partial results, exit 4")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{16}, uint64_t{1} << 30));
  recover->add_option("--time-limit", ro.limits.seconds,
                      "seconds the analysis may take; past them recovery stops with partial results, exit 4")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  ServeArgs sv;
  auto* serve = app.add_subcommand("serve", "intake server: receive bundles from devices over mutual TLS, verify "
                                            "them as they arrive, store them write-once and sign receipts");
  serve->add_option("--listen", sv.listen, "ADDRESS:PORT to listen on (default 127.0.0.1:7443; port 0: any)");
  serve->add_option("--store", sv.store, "evidence store directory (created when missing)")->required();
  serve->add_option("--ca-dir", sv.ca_dir, "lab CA directory: uses its ca.pem and crl.pem");
  serve->add_option("--ca", sv.ca, "lab CA certificate (instead of --ca-dir)");
  serve->add_option("--crl", sv.crl, "CRL to check devices against; re-read when it changes");
  serve->add_option("--cert", sv.cert, "intake certificate from 'mlfx ca issue --server'")->required();
  serve->add_option("--key", sv.key, "its key (a device-kind key: it also signs receipts and custody)")->required();
  serve->add_option("--name", sv.name, "intake name in custody events (default: host name)");
  serve->add_option("--max-bundle", sv.max_bundle, "largest bundle accepted, e.g. 500G (default 1T)")
      ->transform(CLI::AsSizeValue(false));
  serve->add_option("--max-partials", sv.max_partials, "unfinished uploads kept per device (default 8)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-connections", sv.max_connections, "authenticated sessions at once (default 256)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-sessions-per-device", sv.max_sessions_per_device,
                    "sessions of one device at once (default 4)")->check(CLI::PositiveNumber);
  serve->add_option("--max-handshakes", sv.max_handshakes,
                    "connections not authenticated yet; when full, the oldest of the busiest address goes "
                    "(default 256)")->check(CLI::PositiveNumber);
  serve->add_option("--max-handshakes-per-address", sv.max_handshakes_per_address,
                    "of them, from one source address (default 32)")->check(CLI::PositiveNumber);
  serve->add_option("--upload-memory", sv.upload_memory,
                    "record buffers of all uploads in progress, a quarter per device, e.g. 4G (default 2G)")
      ->transform(CLI::AsSizeValue(false));
  serve->add_option("--max-reserved", sv.max_reserved, "disk reserved for unfinished uploads, all devices (default 1T)")
      ->transform(CLI::AsSizeValue(false));
  serve->add_option("--max-reserved-per-device", sv.max_reserved_per_device,
                    "disk reserved for one device's unfinished uploads (default 256G)")
      ->transform(CLI::AsSizeValue(false));
  serve->add_option("--device-quota", sv.device_quota,
                    "bytes one device may hold: stored bundles and unfinished uploads (default: no quota)")
      ->transform(CLI::AsSizeValue(false));
  serve->add_option("--partial-ttl", sv.partial_ttl_s,
                    "seconds an unfinished upload may sit untouched before it is removed, with a signed note in "
                    "the store's journal.jsonl (default 604800: 7 days)")->check(CLI::PositiveNumber);
  serve->add_option("--idle-timeout", sv.idle_timeout_s, "seconds without a frame before a connection is closed (default 60)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--handshake-timeout", sv.handshake_timeout_s,
                    "seconds from connect to HELLO, TLS handshake included (default 5)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--threads", sv.threads, "worker threads (default: one per core, at least 2)");
  serve->add_option("--port-file", sv.port_file, "write the port listened on to this file (for --listen ADDR:0)");

  cli::Commands investigate;
  cli::add_investigate_commands(app, investigate);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (gen->parsed()) return run_keys_gen(kg);
  if (serve->parsed()) {
    if (sv.ca.empty() && sv.ca_dir.empty()) {
      std::fprintf(stderr, "mlfx serve: give the lab CA with --ca-dir DIR (or --ca and --crl)\n");
      return 2;
    }
    return run_serve(sv);
  }
  if (ca_init->parsed()) return run_ca_init(ca_args);
  if (ca_issue->parsed()) return run_ca_issue(ca_args);
  if (ca_revoke->parsed()) return run_ca_revoke(ca_args);
  if (ca_crl->parsed()) return run_ca_crl(ca_args);
  if (ca_list->parsed()) return run_ca_list(ca_args);
  if (seal->parsed()) return run_seal(sa);
  if (verify->parsed()) return run_verify(va);
  if (open->parsed()) return run_open(oa);
  if (info->parsed()) return run_info(ia);
  for (const auto& [command, run] : investigate) {
    if (!command->parsed()) continue;
    try {  // libtorch reports by exception; whatever escapes is a clean failure, not an abort
      return run();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mlfx %s: error: %s\n", command->get_name().c_str(), e.what());
      return 1;
    }
  }
  if (recover->parsed()) {
    ro.limits.memory_bytes = recover_memory_mib << 20;
    ro.show_progress = !recover_quiet && !recover_json;
    return run_recover(ro, recover_json);
  }
  return 2;
}
