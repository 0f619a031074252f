// A JSON object built field by field into one line: the event log and the anomaly messages.
// Dependency-free on purpose (the library runs inside CUDA processes). Addresses and handles
// are "0x..." strings (exact in every JSON reader); counts and sizes are plain integers.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace mlfx::cupti {

class JsonLine {
 public:
  JsonLine() : out_("{") {}

  JsonLine& str(std::string_view key, std::string_view value) {
    this->key(key);
    quote(value);
    return *this;
  }
  JsonLine& num(std::string_view key, int64_t value) {
    this->key(key);
    out_ += std::to_string(value);
    return *this;
  }
  JsonLine& unum(std::string_view key, uint64_t value) {
    this->key(key);
    out_ += std::to_string(value);
    return *this;
  }
  JsonLine& hex(std::string_view key, uint64_t value) {
    char buf[24];
    std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(value));
    return str(key, buf);
  }
  JsonLine& boolean(std::string_view key, bool value) {
    this->key(key);
    out_ += value ? "true" : "false";
    return *this;
  }
  // A value already in JSON (an array or object built elsewhere).
  JsonLine& raw(std::string_view key, std::string_view json) {
    this->key(key);
    out_ += json;
    return *this;
  }
  // The object, closed; with a trailing newline for the log.
  std::string done(bool newline = true) {
    out_ += newline ? "}\n" : "}";
    return std::move(out_);
  }

 private:
  void key(std::string_view k) {
    if (out_.size() > 1) out_ += ',';
    quote(k);
    out_ += ':';
  }
  void quote(std::string_view s) {
    out_ += '"';
    for (size_t i = 0; i < s.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      if (c >= 0x80) {  // a valid UTF-8 sequence passes; a stray byte (a file name's) is U+FFFD
        const size_t n = utf8_length(s.substr(i));
        if (n == 0) {
          out_ += "\\ufffd";
        } else {
          out_.append(s.data() + i, n);
          i += n - 1;
        }
      } else if (c == '"' || c == '\\') {
        out_ += '\\';
        out_ += static_cast<char>(c);
      } else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\u%04x", c);
        out_ += buf;
      } else {
        out_ += static_cast<char>(c);
      }
    }
    out_ += '"';
  }
  // The length of the UTF-8 sequence starting `s`, 0 when it is not a valid one.
  static size_t utf8_length(std::string_view s) {
    const unsigned char c = static_cast<unsigned char>(s[0]);
    const size_t n = c >= 0xf0 && c <= 0xf4   ? 4
                     : c >= 0xe0 && c <= 0xef ? 3
                     : c >= 0xc2 && c <= 0xdf ? 2
                                              : 0;
    if (n == 0 || s.size() < n) return 0;
    for (size_t i = 1; i < n; ++i)
      if ((static_cast<unsigned char>(s[i]) & 0xc0) != 0x80) return 0;
    return n;
  }
  std::string out_;
};

}  // namespace mlfx::cupti
