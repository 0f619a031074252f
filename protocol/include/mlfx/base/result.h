// Result<T>: the one error-reporting type of mlfx (no exceptions on code paths).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

namespace mlfx {

enum class Errc {
  kBadFormat,     // input is not what it claims to be (magic, grammar, sizes)
  kInvalidAddress,  // an address a layer does not map
  kCorrupt,       // well-formed but fails an integrity check (hash, tag, signature)
  kUntrusted,     // intact but signed by a key that is not trusted
  kIo,            // operating-system I/O failure
  kInvalidArgument,
  kExists,        // refusing to overwrite
  kNotFound,
  kPermission,
  kCrypto,        // OpenSSL failure not caused by the input
  kUnsupported,
};

const char* errc_name(Errc c);

// Where in the evidence an error arose, as data for programs (report.json, --json) and
// printed after the message: "(layer elf-core, address 0x7f..., file offset 0x1000)".
struct ErrorLocation {
  std::string layer;                     // the layer or file the address or offset is in
  std::optional<uint64_t> address;       // a virtual or physical address in that layer
  std::optional<uint64_t> file_offset;   // a byte offset in the evidence file or stream
  std::string to_string() const;
};

// An error with a message and a context chain added on the way up, printed
// outermost first: "opening bundle x.mlfx: stream cpu, chunk 17: authentication tag mismatch".
class Error {
 public:
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}

  Errc code() const { return code_; }
  const std::string& message() const { return message_; }
  const std::optional<ErrorLocation>& location() const { return location_; }
  Error&& context(std::string what) && {
    context_.push_back(std::move(what));
    return std::move(*this);
  }
  Error&& at(ErrorLocation where) && {
    location_ = std::move(where);
    return std::move(*this);
  }
  std::string to_string() const;

 private:
  Errc code_;
  std::string message_;
  std::vector<std::string> context_;  // innermost first
  std::optional<ErrorLocation> location_;
};

// [[nodiscard]]: a dropped Result or Status fails the build (-Werror=unused-result).
template <class T>
class [[nodiscard]] Result : public tl::expected<T, Error> {
  using Base = tl::expected<T, Error>;

 public:
  using Base::Base;
  Result(Base b) : Base(std::move(b)) {}  // from tl::expected's own combinators
};
using Status = Result<void>;

inline tl::unexpected<Error> fail(Errc code, std::string message) {
  return tl::unexpected<Error>(Error(code, std::move(message)));
}
inline tl::unexpected<Error> fail(Error e) { return tl::unexpected<Error>(std::move(e)); }

}  // namespace mlfx

// Propagates an error out of the enclosing function, optionally adding context.
#define MLFX_TRY(expr)                                               \
  do {                                                               \
    if (auto mlfx_try_r_ = (expr); !mlfx_try_r_)                     \
      return ::mlfx::fail(std::move(mlfx_try_r_).error());           \
  } while (0)

#define MLFX_CONCAT_INNER_(a, b) a##b
#define MLFX_CONCAT_(a, b) MLFX_CONCAT_INNER_(a, b)
// MLFX_ASSIGN(auto x, f()) : declares x from f()'s value or returns f()'s error.
#define MLFX_ASSIGN(decl, expr) MLFX_ASSIGN_IMPL_(MLFX_CONCAT_(mlfx_r_, __LINE__), decl, expr)
#define MLFX_ASSIGN_IMPL_(tmp, decl, expr)                           \
  auto tmp = (expr);                                                 \
  if (!tmp) return ::mlfx::fail(std::move(tmp).error());             \
  decl = std::move(*tmp)
