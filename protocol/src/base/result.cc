#include "mlfx/base/result.h"

#include "mlfx/base/bytes.h"

namespace mlfx {

const char* errc_name(Errc c) {
  switch (c) {
    case Errc::kBadFormat: return "bad format";
    case Errc::kInvalidAddress: return "invalid address";
    case Errc::kCorrupt: return "integrity failure";
    case Errc::kUntrusted: return "untrusted";
    case Errc::kIo: return "I/O error";
    case Errc::kInvalidArgument: return "invalid argument";
    case Errc::kExists: return "already exists";
    case Errc::kNotFound: return "not found";
    case Errc::kPermission: return "permission denied";
    case Errc::kCrypto: return "crypto library error";
    case Errc::kUnsupported: return "unsupported";
  }
  return "error";
}

std::string ErrorLocation::to_string() const {
  std::string out = layer.empty() ? "" : "layer " + layer;
  auto add = [&out](const std::string& part) { out += (out.empty() ? "" : ", ") + part; };
  if (address) add("address " + hex_address(*address));
  if (file_offset) add("file offset " + hex_address(*file_offset));
  return out;
}

std::string Error::to_string() const {
  std::string out;
  for (auto it = context_.rbegin(); it != context_.rend(); ++it) out += *it + ": ";
  out += message_;
  if (location_) out += " (" + location_->to_string() + ")";
  return out;
}

}  // namespace mlfx
