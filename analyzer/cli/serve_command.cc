// mlfx serve: the intake server (protocol/doc/wire-protocol.md).
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "cli/command.h"
#include "intake/intake_server.h"
#include "mlfx/base/clock.h"
#include "mlfx/base/file.h"
#include "mlfx/base/host.h"
#include "mlfx/base/json.h"
#include "mlfx/base/printable.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::cli {
namespace {

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

int run_serve(const ServeArgs& a) {
  intake::ServerOptions opt;
  auto hp = parse_host_port(a.listen, "--listen", true);
  if (!hp) return report_error("serve", hp.error());
  opt.host = hp->host;
  opt.port = hp->port;
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
  if (!key_file) return report_error("serve", key_file.error());
  if (key_file->kind != crypto::KeyKind::kDevice || !key_file->signing)
    return report_error("serve", Error(Errc::kInvalidArgument, a.key + " is a lab key; the intake signs receipts with a "
                                                          "device-kind key (mlfx keys gen --kind device)"));
  HostIdentity host = local_host_identity();
  custody::Actor actor{"intake", a.name.empty() ? host.hostname : a.name, host.hostname, host.user};
  intake::StoreLimits limits{a.max_bundle, a.max_partials, a.max_reserved, a.max_reserved_per_device, a.device_quota,
                             std::chrono::seconds(static_cast<int64_t>(a.partial_ttl_s))};
  auto store = intake::EvidenceStore::open(a.store, *key_file->signing, actor, limits);
  if (!store) return report_error("serve", store.error());

  // The lab's capture requests in the same store, handed to the devices they name.
  auto requests = intake::RequestQueue::open(a.store);
  if (!requests) return report_error("serve", requests.error());
  opt.requests = &*requests;

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
  if (!server) return report_error("serve", server.error());
  const std::string address = opt.host + ":" + std::to_string((*server)->port());
  if (!a.port_file.empty())
    if (auto st = replace_file(a.port_file, std::to_string((*server)->port()) + "\n", 0644); !st)
      return report_error("serve", st.error());
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

void add_serve_command(CLI::App& app, Registry& registry) {
  auto args = std::make_shared<ServeArgs>();
  ServeArgs& sv = *args;
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

  registry.add(serve, [args] {
    if (args->ca.empty() && args->ca_dir.empty()) {
      std::fprintf(stderr, "mlfx serve: give the lab CA with --ca-dir DIR (or --ca and --crl)\n");
      return kExitUsage;
    }
    return run_serve(*args);
  });
}

}  // namespace mlfx::cli
