// A minimal writer of Python pickle protocol 2: just the opcodes torch.save's state_dict
// pickles use (Lib/pickletools.py documents each). The caller drives the stack machine; this
// only encodes opcodes and keeps the memo of GLOBALs.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace mlfx::exporters {

class PickleWriter {
 public:
  PickleWriter();  // starts with PROTO 2

  // Pushes module.name; the first use emits GLOBAL and memoises it, later uses BINGET it.
  void global(std::string_view module, std::string_view name);
  // Memoises the top of the stack and returns its memo index.
  uint32_t put();
  // Pushes a memoised object.
  void get(uint32_t index);

  void mark();
  void tuple_from_mark();  // TUPLE
  // Builds a tuple of the top n items (EMPTY_TUPLE, TUPLE1..3); n must be 0..3.
  void small_tuple(size_t n);
  // Pushes a tuple of ints, choosing the shortest encoding.
  void int_tuple(std::span<const int64_t> values);
  void integer(int64_t v);       // BININT1 / BININT2 / BININT / LONG1
  void unicode(std::string_view utf8);  // BINUNICODE
  void boolean(bool v);          // NEWTRUE / NEWFALSE
  void empty_dict();
  void reduce();
  void setitems();
  void binpersid();
  void stop();

  const std::string& data() const { return out_; }

 private:
  void op(uint8_t code) { out_.push_back(static_cast<char>(code)); }
  void le(uint64_t v, size_t n);

  std::string out_;
  uint32_t next_memo_ = 0;
  std::map<std::pair<std::string, std::string>, uint32_t> globals_;
};

}  // namespace mlfx::exporters
