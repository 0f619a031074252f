// mlfx keys gen: device keys (sign evidence), lab keys (receive it) and lab request keys (sign
// capture requests to devices: an Ed25519 key alone, like a device key).
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "mlfx/crypto/keys.h"

namespace mlfx::cli {
namespace {

struct KeysGenArgs {
  std::string kind, out;
};

int run_keys_gen(const KeysGenArgs& a) {
  crypto::KeyKind kind = a.kind == "lab" ? crypto::KeyKind::kLab : crypto::KeyKind::kDevice;
  if (auto st = crypto::generate_key_files(kind, a.out); !st) return report_error("keys gen", st.error());
  auto pub = crypto::load_public_key_file(a.out + ".pub");
  if (!pub) return report_error("keys gen", pub.error());
  std::printf("wrote %s.key (private, mode 0600) and %s.pub\n", a.out.c_str(), a.out.c_str());
  if (pub->box) std::printf("recipient key: %s\n", pub->box->fingerprint().c_str());
  std::printf("signing key:   %s\n", pub->verify->fingerprint().c_str());
  if (a.kind == "request")
    std::printf("devices honour requests it signs when its .pub is among their [lab_requests] signers\n");
  return 0;
}

}  // namespace

void add_keys_commands(CLI::App& app, Registry& registry) {
  auto* keys = app.add_subcommand("keys", "manage device and lab keys")->require_subcommand(1);
  auto a = std::make_shared<KeysGenArgs>();
  auto* gen = keys->add_subcommand("gen", "generate a key pair: PREFIX.key (0600) and PREFIX.pub");
  gen->add_option("--kind", a->kind, "device (signs evidence), lab (receives evidence) or request (signs capture "
                                     "requests to devices)")
      ->required()->check(CLI::IsMember({"device", "lab", "request"}));
  gen->add_option("--out", a->out, "output prefix")->required();
  registry.add(gen, [a] { return run_keys_gen(*a); });
}

}  // namespace mlfx::cli
