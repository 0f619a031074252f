// mlfx ca: the lab certificate authority for the intake's mutual TLS.
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "mlfx/base/file.h"
#include "mlfx/base/json.h"
#include "pki/lab_ca.h"

namespace mlfx::cli {
namespace {

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
  if (auto st = pki::init_ca(o); !st) return report_error("ca", st.error());
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
  if (!e) return report_error("ca", e.error());
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
    if (!pem) return report_error("ca", pem.error());
    t.certificate_pem = *pem;
  }
  auto e = pki::revoke_certificate(a.dir, t, a.reason);
  if (!e) return report_error("ca", e.error());
  std::printf("revoked serial %s (%s %s); wrote %s/crl.pem\n", e->serial.c_str(),
              pki::cert_kind_name(e->kind), e->id.c_str(), a.dir.c_str());
  return 0;
}

int run_ca_crl(const CaArgs& a) {
  if (auto st = pki::refresh_crl(a.dir); !st) return report_error("ca", st.error());
  std::printf("wrote %s/crl.pem (next update in %d days)\n", a.dir.c_str(), pki::kCrlDays);
  return 0;
}

int run_ca_list(const CaArgs& a) {
  auto entries = pki::list_certificates(a.dir);
  if (!entries) return report_error("ca", entries.error());
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

}  // namespace

void add_ca_commands(CLI::App& app, Registry& registry) {
  auto args = std::make_shared<CaArgs>();
  CaArgs& ca_args = *args;
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

  registry.add(ca_init, [args] { return run_ca_init(*args); });
  registry.add(ca_issue, [args] { return run_ca_issue(*args); });
  registry.add(ca_revoke, [args] { return run_ca_revoke(*args); });
  registry.add(ca_crl, [args] { return run_ca_crl(*args); });
  registry.add(ca_list, [args] { return run_ca_list(*args); });
}

}  // namespace mlfx::cli
