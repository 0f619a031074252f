#include "mlfx/bundle/sealing_keys.h"

namespace mlfx::bundle {

Result<SealingKeys> load_sealing_keys(const std::string& device_key_path,
                                      const std::vector<std::string>& recipient_paths) {
  MLFX_ASSIGN(crypto::SecretKeyFile dev, crypto::load_secret_key_file(device_key_path));
  if (dev.kind != crypto::KeyKind::kDevice)
    return fail(Errc::kInvalidArgument, device_key_path + " is a lab key; seal with a device key "
                                                          "('mlfx keys gen --kind device')");
  SealingKeys keys{std::move(dev), {}};
  for (const auto& r : recipient_paths) {
    MLFX_ASSIGN(crypto::PublicKeyFile k, crypto::load_public_key_file(r));
    if (!k.box)
      return fail(Errc::kInvalidArgument, r + " is a device key; --recipient takes a lab .pub "
                                              "('mlfx keys gen --kind lab')");
    keys.recipients.push_back(*k.box);
  }
  return keys;
}

}  // namespace mlfx::bundle
