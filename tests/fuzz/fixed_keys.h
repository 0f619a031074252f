// Fixed, PUBLICLY KNOWN test keys for the fuzz targets and their seed corpus. They were made
// once with `mlfx keys gen --kind device|lab` and must never protect real evidence.
//
// The seed bundles written by make_corpus are signed by kFixedDeviceKeyPem and encrypted to
// kFixedLabKeyPem, so that bundle_reader_fuzz can go all the way to decrypting streams.
#pragma once

namespace mlfx::fuzz {

// Device key (Ed25519), PKCS#8 as in device.key.
inline constexpr const char kFixedDeviceKeyPem[] = R"PEM(-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIIrndtuIlyesEgrojrgm7bTKogFTx7AKTxIon5O0Rnli
-----END PRIVATE KEY-----
)PEM";

// Its public half, as in device.pub.
inline constexpr const char kFixedDevicePubPem[] = R"PEM(-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAYR5d/cLjs9e1OfE8XE++/KUgYOaO66PMGaf5qiOKJbs=
-----END PUBLIC KEY-----
)PEM";

// Lab key (X25519 recipient key, then Ed25519 signing key), as in lab.key.
inline constexpr const char kFixedLabKeyPem[] = R"PEM(-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VuBCIEIGDiB7Sm2vxFULahd8XFZ9AoF87zVo/JzK6et8kfZvNj
-----END PRIVATE KEY-----
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFl5nYAeGwkgeX4jnPkI7XoFryBsLU+KzULlgGVkfJMF
-----END PRIVATE KEY-----
)PEM";

// Its public halves, as in lab.pub.
inline constexpr const char kFixedLabPubPem[] = R"PEM(-----BEGIN PUBLIC KEY-----
MCowBQYDK2VuAyEAcaZSwkzO9+MPkEtRej4uVAFzDWdZimATMdACCwVFVHY=
-----END PUBLIC KEY-----
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEARkpSP+qnG67FBAT+9pxsSB8njUL9NATl+UcjXggOE5s=
-----END PUBLIC KEY-----
)PEM";

// The bundle id of the custody logs in the custody seed corpus and of custody_fuzz.
inline constexpr const char kFixedBundleIdHex[] = "6d6c66782d66757a7a2d62756e646c65";  // "mlfx-fuzz-bundle"

}  // namespace mlfx::fuzz
