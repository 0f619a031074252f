#include "exporters/pickle_writer.h"

namespace mlfx::exporters {
namespace {

// Opcode bytes, from CPython's Lib/pickle.py.
enum : uint8_t {
  kProto = 0x80,
  kGlobal = 'c',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kMark = '(',
  kTuple = 't',
  kEmptyTuple = ')',
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kLong1 = 0x8a,
  kBinUnicode = 'X',
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kEmptyDict = '}',
  kReduce = 'R',
  kSetItems = 'u',
  kBinPersId = 'Q',
  kStop = '.',
};

}  // namespace

PickleWriter::PickleWriter() {
  op(kProto);
  op(2);
}

void PickleWriter::le(uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
}

void PickleWriter::global(std::string_view module, std::string_view name) {
  auto key = std::make_pair(std::string(module), std::string(name));
  if (auto it = globals_.find(key); it != globals_.end()) return get(it->second);
  op(kGlobal);
  out_.append(module);
  out_.push_back('\n');
  out_.append(name);
  out_.push_back('\n');
  globals_.emplace(std::move(key), put());
}

uint32_t PickleWriter::put() {
  const uint32_t index = next_memo_++;
  if (index < 256) {
    op(kBinPut);
    le(index, 1);
  } else {
    op(kLongBinPut);
    le(index, 4);
  }
  return index;
}

void PickleWriter::get(uint32_t index) {
  if (index < 256) {
    op(kBinGet);
    le(index, 1);
  } else {
    op(kLongBinGet);
    le(index, 4);
  }
}

void PickleWriter::mark() { op(kMark); }
void PickleWriter::tuple_from_mark() { op(kTuple); }

void PickleWriter::small_tuple(size_t n) {
  static constexpr uint8_t kOps[] = {kEmptyTuple, kTuple1, kTuple2, kTuple3};
  op(kOps[n]);
}

void PickleWriter::int_tuple(std::span<const int64_t> values) {
  if (values.size() > 3) mark();
  for (int64_t v : values) integer(v);
  if (values.size() > 3) {
    tuple_from_mark();
  } else {
    small_tuple(values.size());
  }
}

void PickleWriter::integer(int64_t v) {
  if (v >= 0 && v < 256) {
    op(kBinInt1);
    le(static_cast<uint64_t>(v), 1);
  } else if (v >= 0 && v < 65536) {
    op(kBinInt2);
    le(static_cast<uint64_t>(v), 2);
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    op(kBinInt);
    le(static_cast<uint64_t>(v), 4);
  } else {
    // LONG1: the shortest little-endian two's complement that keeps the sign.
    std::string bytes;
    const auto u = static_cast<uint64_t>(v);
    for (size_t i = 0; i < 8; ++i) {
      bytes.push_back(static_cast<char>(u >> (8 * i)));
      const int64_t rest = v >> (8 * i + 7);  // arithmetic: 0 or -1 once the sign bit is in
      if (rest == 0 || rest == -1) break;
    }
    op(kLong1);
    le(bytes.size(), 1);
    out_ += bytes;
  }
}

void PickleWriter::unicode(std::string_view utf8) {
  op(kBinUnicode);
  le(utf8.size(), 4);
  out_.append(utf8);
}

void PickleWriter::boolean(bool v) { op(v ? kNewTrue : kNewFalse); }
void PickleWriter::empty_dict() { op(kEmptyDict); }
void PickleWriter::reduce() { op(kReduce); }
void PickleWriter::setitems() { op(kSetItems); }
void PickleWriter::binpersid() { op(kBinPersId); }
void PickleWriter::stop() { op(kStop); }

}  // namespace mlfx::exporters
