// Strict, non-throwing access to parsed JSON (nlohmann) for untrusted documents.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "mlfx/base/bytes.h"
#include "mlfx/base/result.h"

namespace mlfx::json {

using Json = nlohmann::json;

inline constexpr int kMaxDepth = 64;

// Parses without exceptions; names `what` in the error. Refuses nesting deeper than kMaxDepth.
Result<Json> parse(std::string_view text, const std::string& what);
// Deterministic serialisation used for everything signed: sorted keys, no spaces, UTF-8.
std::string canonical(const Json& j);

Result<std::string> get_string(const Json& obj, const char* key, const std::string& where);
Result<uint64_t> get_uint(const Json& obj, const char* key, const std::string& where);
Result<Bytes> get_hex(const Json& obj, const char* key, size_t size, const std::string& where);
Result<Bytes> get_base64(const Json& obj, const char* key, size_t size, const std::string& where);
Result<const Json*> get_object(const Json& obj, const char* key, const std::string& where);
Result<const Json*> get_array(const Json& obj, const char* key, const std::string& where);
// Optional string: absent or null gives nullopt; any other non-string is an error.
Result<std::optional<std::string>> get_optional_string(const Json& obj, const char* key,
                                                       const std::string& where);

}  // namespace mlfx::json
