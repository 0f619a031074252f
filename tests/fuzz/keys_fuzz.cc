// Fuzzes the key file parsers parse_secret_key_pem and parse_public_key_pem (OpenSSL PEM
// decoding plus mlfx's rules: one Ed25519 key, optionally one X25519 key).
//
// Invariants: an accepted private key signs, and its own public key verifies the signature;
// an accepted public key file's keys write out as PEM that parses to the same fingerprints.
//
// OpenSSL's default PEM pass-phrase callback prompts on the terminal (or reads stdin) when it
// meets an encrypted key, which would block a fuzzer run from a terminal. The harness puts a
// null UI method in place so such a prompt fails at once; see README.md.
#include <openssl/ui.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_support.h"
#include "mlfx/crypto/keys.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mlfx;
  static const bool no_prompts = [] {
    UI_set_default_method(UI_null());
    return true;
  }();
  (void)no_prompts;
  const std::string_view pem(reinterpret_cast<const char*>(data), size);

  if (auto sk = crypto::parse_secret_key_pem(pem, "fuzz.key")) {
    if (!sk->signing) fuzz::invariant_failed("a parsed private key file has an Ed25519 key", "");
    if ((sk->kind == crypto::KeyKind::kLab) != sk->box.has_value())
      fuzz::invariant_failed("lab kind iff an X25519 key", "");
    static const std::string_view msg = "mlfx fuzz message";
    auto sig = sk->signing->sign(as_bytes(msg));
    if (!sig) fuzz::invariant_failed("a parsed signing key signs", sig.error().to_string());
    if (!sk->signing->public_key().verify(as_bytes(msg), *sig))
      fuzz::invariant_failed("a signature verifies with its own public key",
                             sk->signing->public_key().fingerprint());
  }

  if (auto pk = crypto::parse_public_key_pem(pem, "fuzz.pub")) {
    if (!pk->verify) fuzz::invariant_failed("a parsed public key file has an Ed25519 key", "");
    std::string out = pk->verify->pem();
    if (pk->box) out += pk->box->pem();
    auto again = crypto::parse_public_key_pem(out, "rewritten.pub");
    if (!again) fuzz::invariant_failed("a rewritten public key parses", again.error().to_string());
    if (again->verify->fingerprint() != pk->verify->fingerprint() ||
        again->box.has_value() != pk->box.has_value() ||
        (pk->box && again->box->fingerprint() != pk->box->fingerprint()))
      fuzz::invariant_failed("a rewritten public key keeps its fingerprints", out);
  }
  return 0;
}
