#include "mlfx/base/printable.h"

#include <cstdint>
#include <cstdio>

namespace mlfx {

namespace {

// The code point of the well-formed UTF-8 sequence at s[i] and its length; length 0 when the
// bytes there are not one (stray continuation, truncated, overlong, surrogate, past U+10FFFF).
struct Decoded {
  uint32_t cp = 0;
  size_t length = 0;
};

Decoded decode(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b = byte(i);
  if (b < 0x80) return {b, 1};
  size_t n;
  uint32_t cp, min;
  if ((b & 0xe0) == 0xc0) n = 2, cp = b & 0x1f, min = 0x80;
  else if ((b & 0xf0) == 0xe0) n = 3, cp = b & 0x0f, min = 0x800;
  else if ((b & 0xf8) == 0xf0) n = 4, cp = b & 0x07, min = 0x10000;
  else return {};
  if (s.size() - i < n) return {};
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return {};
    cp = cp << 6 | (byte(i + k) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return {};
  return {cp, n};
}

// Characters a terminal acts on or that change how the line around them is shown.
bool is_active(uint32_t cp) {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

void append_escape(std::string& out, uint32_t cp) {
  char buf[16];
  switch (cp) {
    case '\n': out += "\\n"; return;
    case '\t': out += "\\t"; return;
    case '\r': out += "\\r"; return;
  }
  if (cp < 0x80) std::snprintf(buf, sizeof buf, "\\x%02x", cp);
  else std::snprintf(buf, sizeof buf, "\\u{%x}", cp);
  out += buf;
}

}  // namespace

std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const Decoded d = decode(s, i);
    if (d.length == 0) {  // not UTF-8: the byte itself, visibly
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<uint8_t>(s[i]));
      out += buf;
      ++i;
      continue;
    }
    if (d.cp == '\\') out += "\\\\";
    else if (is_active(d.cp)) append_escape(out, d.cp);
    else out.append(s, i, d.length);
    i += d.length;
  }
  return out;
}

std::string printable_json(const json::Json& j, int indent) {
  return j.dump(indent, ' ', /*ensure_ascii=*/true, json::Json::error_handler_t::replace);
}

}  // namespace mlfx
