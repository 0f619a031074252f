#include "mlfx/base/json.h"

namespace mlfx::json {

Result<Json> parse(std::string_view text, const std::string& what) {
  // The parser is iterative but copying and printing a value recurse once per level, so
  // hostile nesting must be refused here, before anything else touches the value.
  bool too_deep = false;
  Json::parser_callback_t limit_depth = [&too_deep](int depth, Json::parse_event_t, Json&) {
    if (depth > kMaxDepth) too_deep = true;
    return depth <= kMaxDepth;
  };
  Json j = Json::parse(text.begin(), text.end(), limit_depth, /*allow_exceptions=*/false);
  if (too_deep)
    return fail(Errc::kBadFormat, what + " nests deeper than " + std::to_string(kMaxDepth) + " levels");
  if (j.is_discarded()) return fail(Errc::kBadFormat, what + " is not valid JSON");
  return j;
}

std::string canonical(const Json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

static Result<const Json*> member(const Json& obj, const char* key, const std::string& where) {
  if (!obj.is_object()) return fail(Errc::kBadFormat, where + " is not a JSON object");
  auto it = obj.find(key);
  if (it == obj.end()) return fail(Errc::kBadFormat, where + ": missing field '" + key + "'");
  return &*it;
}

Result<std::string> get_string(const Json& obj, const char* key, const std::string& where) {
  MLFX_ASSIGN(const Json* v, member(obj, key, where));
  if (!v->is_string())
    return fail(Errc::kBadFormat, where + ": field '" + key + "' must be a string");
  return v->get<std::string>();
}

Result<uint64_t> get_uint(const Json& obj, const char* key, const std::string& where) {
  MLFX_ASSIGN(const Json* v, member(obj, key, where));
  if (!v->is_number_unsigned())
    return fail(Errc::kBadFormat, where + ": field '" + key + "' must be a non-negative integer");
  return v->get<uint64_t>();
}

Result<Bytes> get_hex(const Json& obj, const char* key, size_t size, const std::string& where) {
  MLFX_ASSIGN(std::string s, get_string(obj, key, where));
  auto b = from_hex(s);
  if (!b || (size && b->size() != size))
    return fail(Errc::kBadFormat, where + ": field '" + key + "' must be " +
                                      std::to_string(size * 2) + " hex digits");
  return *b;
}

Result<Bytes> get_base64(const Json& obj, const char* key, size_t size, const std::string& where) {
  MLFX_ASSIGN(std::string s, get_string(obj, key, where));
  auto b = from_base64(s);
  if (!b || (size && b->size() != size))
    return fail(Errc::kBadFormat, where + ": field '" + key + "' must be base64 of " +
                                      std::to_string(size) + " bytes");
  return *b;
}

Result<const Json*> get_object(const Json& obj, const char* key, const std::string& where) {
  MLFX_ASSIGN(const Json* v, member(obj, key, where));
  if (!v->is_object())
    return fail(Errc::kBadFormat, where + ": field '" + key + "' must be an object");
  return v;
}

Result<const Json*> get_array(const Json& obj, const char* key, const std::string& where) {
  MLFX_ASSIGN(const Json* v, member(obj, key, where));
  if (!v->is_array()) return fail(Errc::kBadFormat, where + ": field '" + key + "' must be an array");
  return v;
}

Result<std::optional<std::string>> get_optional_string(const Json& obj, const char* key,
                                                       const std::string& where) {
  if (!obj.is_object()) return fail(Errc::kBadFormat, where + " is not a JSON object");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<std::string>{};
  if (!it->is_string())
    return fail(Errc::kBadFormat, where + ": field '" + key + "' must be a string");
  return std::optional<std::string>(it->get<std::string>());
}

}  // namespace mlfx::json
