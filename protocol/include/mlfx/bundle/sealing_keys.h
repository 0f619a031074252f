// The keys a sealer needs, loaded from files and checked for their kind: the device key that
// signs and the lab keys that receive. Shared by `mlfx bundle seal` and `mlfx-agent capture`.
#pragma once

#include <string>
#include <vector>

#include "mlfx/crypto/keys.h"

namespace mlfx::bundle {

struct SealingKeys {
  crypto::SecretKeyFile device;  // a device key: `device.signing` is set
  std::vector<crypto::BoxPublicKey> recipients;
};

// Refuses a lab key as the device key and a device key as a recipient, naming the file and
// the command that makes the right kind.
Result<SealingKeys> load_sealing_keys(const std::string& device_key_path,
                                      const std::vector<std::string>& recipient_paths);

}  // namespace mlfx::bundle
